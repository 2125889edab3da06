"""Procedural chest-CT phantom generator with ground-truth lung nodules (numpy/scipy only, seeded).

The anatomy (body outline, subcutaneous fat, muscle, ribs, spine, mediastinum and heart, lungs with branching
vessels and airways) scales with the field of view; nodule, vessel and airway sizes are absolute in millimetres.
Everything is rasterised directly on the requested grid, small structures by stamping balls in local boxes, so a
full 512x512x300 volume is possible while small training volumes take well under a second.

Geometry follows ``dicom_io.types``: the array is ``[k, j, i]``; an axial acquisition with row direction (1,0,0)
and column direction (0,1,0), so ``LPS = origin + (i*di, j*dj, k*dk)``; k increases toward the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

HU_AIR = -1000.0
HU_LUNG = -850.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_BONE = 700.0
HU_BLOOD = 40.0

NODULE_TYPES = ("solid", "part-solid", "ground-glass")


@dataclass
class NoduleTruth:
    """One constructed nodule. ``index`` is its value in ``Phantom.labels``."""

    index: int
    type: str
    center_lps: tuple[float, float, float]
    center_kji: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    diameter_mm: float
    solid_diameter_mm: float
    attachment: str  # "none", "pleura" or "vessel"


@dataclass
class Phantom:
    hu: np.ndarray  # int16 [k, j, i]
    labels: np.ndarray  # uint8 [k, j, i]: 0 background, n = NoduleTruth.index
    lungs: np.ndarray  # bool [k, j, i]
    spacing: tuple[float, float, float]  # (k, j, i) mm
    origin: tuple[float, float, float]  # LPS of voxel (0, 0, 0)
    nodules: list[NoduleTruth] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        """4x4 mapping [k, j, i, 1] -> LPS mm."""
        a = np.eye(4)
        a[:3, :3] = np.array([[0.0, 0.0, self.spacing[2]], [0.0, self.spacing[1], 0.0], [self.spacing[0], 0.0, 0.0]])
        a[:3, 3] = self.origin
        return a


class _Grid:
    """Physical coordinates of the voxel grid, centred on the volume centre (x, y, z mm)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        nk, nj, ni = shape
        dk, dj, di = spacing
        self.x = ((np.arange(ni) - (ni - 1) / 2) * di).astype(np.float32)
        self.y = ((np.arange(nj) - (nj - 1) / 2) * dj).astype(np.float32)
        self.z = ((np.arange(nk) - (nk - 1) / 2) * dk).astype(np.float32)
        self.half = np.array([abs(self.x[0]), abs(self.y[0]), abs(self.z[0])])

    def to_index(self, p: np.ndarray) -> np.ndarray:
        """(x, y, z) mm -> fractional (k, j, i)."""
        nk, nj, ni = self.shape
        return np.array(
            [p[2] / self.spacing[0] + (nk - 1) / 2, p[1] / self.spacing[1] + (nj - 1) / 2,
             p[0] / self.spacing[2] + (ni - 1) / 2]
        )

    def box(self, centre: np.ndarray, radius: float) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray,
                                                             np.ndarray] | None:
        """Index box around ``centre`` (x, y, z mm) of half-size ``radius`` mm, with its local coordinates."""
        c = self.to_index(centre)
        r = radius / self.spacing
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        zz = self.z[sl[0]][:, None, None] - centre[2]
        yy = self.y[sl[1]][None, :, None] - centre[1]
        xx = self.x[sl[2]][None, None, :] - centre[0]
        return sl, xx, yy, zz


def _lung_mask(g: _Grid, rng: np.random.Generator, params: dict) -> np.ndarray:
    ax, by, hz = g.half
    x, y, z = g.x[None, None, :], g.y[None, None, :].reshape(1, -1, 1), g.z[:, None, None]
    mask = np.zeros(g.shape, dtype=bool)
    for side in (-1.0, 1.0):
        cx = side * params["lung_cx"] * ax
        rx = params["lung_rx"] * ax * (1.0 + 0.08 * (side > 0))
        ry = params["lung_ry"] * by
        # Lungs narrow toward the apex (top of the volume) and sit on a diaphragm dome at the bottom.
        taper = np.clip(1.0 - params["apex_taper"] * np.clip((z - 0.2 * hz) / hz, 0, None) ** 2, 0.2, 1.0)
        inside = ((x - cx) / (rx * taper)) ** 2 + ((y - 0.05 * by) / (ry * taper)) ** 2 <= 1.0
        dome = params["dome_z"] * hz + params["dome_h"] * hz * (1.0 - ((x - cx) / rx) ** 2 - (y / ry) ** 2)
        mask |= inside & (z > dome)
    # Mediastinum between the lungs, wider anteriorly (heart) in the lower part.
    heart = ((x - 0.12 * ax) / (0.32 * ax)) ** 2 + ((y + 0.25 * by) / (0.45 * by)) ** 2 + (
        (z + 0.25 * hz) / (0.9 * hz)) ** 2 <= 1.0
    mediastinum = (np.abs(x) < params["mediastinum_w"] * ax) & (y > -0.9 * by)
    mask &= ~(heart | mediastinum)
    return mask


def _tube_points(start: np.ndarray, direction: np.ndarray, radius: float, length: float,
                 rng: np.random.Generator, generations: int, shrink: float, out: list) -> None:
    """Append (x, y, z, r) centreline points of a randomly branching tube tree."""
    step = max(radius * 0.5, 0.4)
    n = max(int(length / step), 1)
    p = start.copy()
    d = direction / np.linalg.norm(direction)
    for _ in range(n):
        d = d + rng.normal(0, 0.06, 3)
        d /= np.linalg.norm(d)
        p = p + d * step
        out.append((p[0], p[1], p[2], radius))
    if generations <= 0 or radius * shrink < 0.45:
        return
    for _ in range(2):
        nd = d + rng.normal(0, 0.55, 3)
        _tube_points(p, nd, radius * shrink, length * rng.uniform(0.7, 1.0), rng, generations - 1, shrink, out)


def _stamp(g: _Grid, target: np.ndarray, points: list, value, pad: float = 0.0,
           within: np.ndarray | None = None) -> None:
    """Set ``target`` to ``value`` inside balls of radius r + pad around each centreline point."""
    for x, y, z, r in points:
        rr = r + pad
        b = g.box(np.array([x, y, z]), rr)
        if b is None:
            continue
        sl, xx, yy, zz = b
        ball = xx * xx + yy * yy + zz * zz <= rr * rr
        if within is not None:
            ball &= within[sl]
        target[sl][ball] = value


def _nodule_shape(xx, yy, zz, semi: np.ndarray, rot: np.ndarray, lobulation: float, phases: np.ndarray) -> np.ndarray:
    """Signed 'radius ratio' of a lobulated ellipsoid: <= 1 inside."""
    pts = np.stack(np.broadcast_arrays(xx, yy, zz), axis=-1) @ rot.T
    q = np.sqrt((pts[..., 0] / semi[0]) ** 2 + (pts[..., 1] / semi[1]) ** 2 + (pts[..., 2] / semi[2]) ** 2)
    if lobulation > 0:
        norm = np.linalg.norm(pts, axis=-1) + 1e-6
        u = pts / norm[..., None]
        bumps = sum(np.cos(3.0 * (u @ phases[m, :3]) + phases[m, 3]) for m in range(phases.shape[0]))
        q = q / (1.0 + lobulation * bumps / phases.shape[0])
    return q


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q


def generate_phantom(
    seed: int,
    shape: tuple[int, int, int] = (80, 160, 160),
    spacing: tuple[float, float, float] | None = None,
    n_nodules: int | None = None,
    nodule_types: tuple[str, ...] = NODULE_TYPES,
    diameter_range_mm: tuple[float, float] = (3.0, 30.0),
    noise_sd: float | None = None,
    nodules: list[dict] | None = None,
) -> Phantom:
    """Build one chest phantom.

    ``spacing`` defaults to a random slice thickness in [0.6, 2.5] mm and pixel spacing in [0.5, 0.9] mm.
    ``nodules`` places nodules explicitly: dicts with ``center_xyz`` (mm from the volume centre; LPS axes),
    ``diameter_mm``, ``type`` and optional ``solid_fraction`` (core/total diameter for part-solid); otherwise
    ``n_nodules`` (default 1 to 4) random nodules are placed inside the lungs.
    """
    rng = np.random.default_rng(seed)
    if spacing is None:
        spacing = (float(rng.uniform(0.6, 2.5)), *(2 * [float(rng.uniform(0.5, 0.9))]))
    spacing = tuple(float(s) for s in spacing)
    g = _Grid(shape, spacing)
    ax, by, hz = g.half
    params = {
        "lung_cx": rng.uniform(0.42, 0.5), "lung_rx": rng.uniform(0.3, 0.36), "lung_ry": rng.uniform(0.55, 0.65),
        "apex_taper": rng.uniform(0.2, 0.6), "dome_z": rng.uniform(-1.4, -0.9), "dome_h": rng.uniform(0.2, 0.5),
        "mediastinum_w": rng.uniform(0.1, 0.14),
    }
    x, y, z = g.x[None, None, :], g.y[None, :, None], g.z[:, None, None]

    hu = np.full(shape, HU_AIR, dtype=np.float32)
    body_a, body_b = rng.uniform(0.88, 0.96) * ax, rng.uniform(0.78, 0.88) * by
    body = (x / body_a) ** 2 + (y / body_b) ** 2 <= 1.0
    fat_t = rng.uniform(4.0, 14.0)
    inner = (x / (body_a - fat_t)) ** 2 + (y / (body_b - fat_t)) ** 2 <= 1.0
    hu[np.broadcast_to(body, shape)] = HU_FAT
    hu[np.broadcast_to(inner, shape)] = HU_SOFT

    # Ribs: elliptical band inside the muscle wall, periodic along z (rib every ~25 mm, ~8 mm thick).
    ring = (x / (body_a - fat_t - 6)) ** 2 + (y / (body_b - fat_t - 6)) ** 2
    band = (ring <= 1.0) & (ring >= (1 - 8.0 / (body_a - fat_t)) ** 2)
    period, phase = rng.uniform(22, 28), rng.uniform(0, 25)
    slope = rng.uniform(0.15, 0.35)  # ribs descend anteriorly
    rib_z = np.mod(z + slope * (-y) + phase, period) < 8.0
    hu[band & rib_z & (np.abs(x) > 0.1 * ax)] = HU_BONE

    # Spine: vertebral body with spinal canal, posterior midline.
    vy, vr = body_b - fat_t - 0.28 * by, 0.11 * ax
    hu[np.broadcast_to((x / vr) ** 2 + ((y - vy) / vr) ** 2 <= 1.0, shape)] = HU_BONE
    hu[np.broadcast_to((x / (0.4 * vr)) ** 2 + ((y - vy - 1.4 * vr) / (0.4 * vr)) ** 2 <= 1.0, shape)] = HU_SOFT
    hu[np.broadcast_to((x / (0.15 * ax)) ** 2 + ((y - vy - 1.4 * vr) / (0.8 * vr)) ** 2 <= 1.0, shape)
       & ~np.broadcast_to((x / (0.4 * vr)) ** 2 + ((y - vy - 1.4 * vr) / (0.4 * vr)) ** 2 <= 1.0, shape)] = HU_BONE

    lungs = _lung_mask(g, rng, params)
    hu[lungs] = HU_LUNG + rng.normal(0, 15)

    # Vessels: branching trees from each hilum, drawn only inside the lungs.
    vessel_pts: list = []
    for side in (-1.0, 1.0):
        hilum = np.array([side * params["lung_cx"] * ax * 0.55, 0.05 * by, 0.0])
        for _ in range(int(rng.integers(3, 5))):
            direction = np.array([side * rng.uniform(0.3, 1.0), rng.uniform(-1, 1), rng.uniform(-1, 1)])
            _tube_points(hilum, direction, rng.uniform(2.5, 4.5), rng.uniform(18, 30), rng, 5, 0.72, vessel_pts)
    vessels = np.zeros(shape, dtype=bool)
    _stamp(g, vessels, vessel_pts, True, within=lungs)
    hu[vessels] = HU_BLOOD

    # Airways: trachea at the top of the field, main bronchi and a few branches, with soft-tissue walls.
    airway_pts: list = []
    _tube_points(np.array([0.0, -0.1 * by, hz]), np.array([0, 0, -1.0]), 8.0, hz * 0.9, rng, 0, 1.0, airway_pts)
    for side in (-1.0, 1.0):
        _tube_points(np.array([0.0, -0.1 * by, 0.1 * hz]), np.array([side, 0.2, -0.6]), 5.5, 25, rng, 3, 0.7,
                     airway_pts)
    _stamp(g, hu, airway_pts, HU_SOFT, pad=1.5)
    _stamp(g, hu, airway_pts, HU_AIR)

    labels = np.zeros(shape, dtype=np.uint8)
    truths: list[NoduleTruth] = []
    specs = nodules if nodules is not None else _random_nodule_specs(
        g, lungs, vessel_pts, rng, n_nodules, nodule_types, diameter_range_mm)
    for spec in specs:
        t = _draw_nodule(g, hu, labels, spec, rng, len(truths) + 1)
        if t is not None:
            truths.append(t)

    # Partial-volume blur (thicker slices blur more along z), then correlated noise.
    ndimage.gaussian_filter(hu, sigma=(0.5 * min(1.0, 1.0 / spacing[0]) + 0.2, 0.6, 0.6), output=hu, truncate=2.0)
    sd = float(rng.uniform(10, 30)) if noise_sd is None else noise_sd
    noise = rng.standard_normal(shape, dtype=np.float32)
    ndimage.gaussian_filter(noise, sigma=(0.5, 0.9, 0.9), output=noise, truncate=2.0)
    noise *= sd / max(float(noise.std()), 1e-6)
    hu += noise
    del noise
    np.clip(hu, -1024, 3071, out=hu)

    origin_xyz = (float(g.x[0]), float(g.y[0]), float(g.z[0]))
    return Phantom(hu=np.rint(hu).astype(np.int16), labels=labels, lungs=lungs, spacing=spacing,
                   origin=origin_xyz, nodules=truths)


def _random_nodule_specs(g: _Grid, lungs: np.ndarray, vessel_pts: list, rng: np.random.Generator,
                         n: int | None, types: tuple[str, ...], drange: tuple[float, float]) -> list[dict]:
    """Nodule centres inside the lungs; about a third touch the pleura and a third a vessel.

    Every centre lies at least its nodule's radius inside the first and last slice (``_inside_z``), so no nodule
    is cut in half by the end of the scan.
    """
    n = int(rng.integers(1, 5)) if n is None else n
    # Distance to the lung boundary on a coarse grid (cheap on any volume size).
    step = np.maximum(np.round(2.0 / g.spacing).astype(int), 1)
    coarse = lungs[::step[0], ::step[1], ::step[2]]
    dist = ndimage.distance_transform_edt(coarse, sampling=g.spacing * step)
    specs: list[dict] = []
    for _ in range(n):
        kind = types[int(rng.integers(len(types)))]
        # Log-uniform diameter favours small nodules, as in screening.
        d = float(np.exp(rng.uniform(np.log(drange[0]), np.log(drange[1]))))
        if kind == "ground-glass":
            d = max(d, 5.0)
        elif kind == "part-solid":
            d = max(d, 6.0)
        attach = ("none", "pleura", "vessel")[int(rng.integers(3))]
        r = d / 2
        if attach == "pleura":
            cand = np.argwhere((dist > 0.6 * r) & (dist < 0.6 * r + 2.5))
        elif attach == "vessel" and vessel_pts:
            cand = None
        else:
            cand = np.argwhere(dist > r + 3.0)
        if attach == "vessel" and vessel_pts:
            v = vessel_pts[int(rng.integers(len(vessel_pts)))]
            offset = rng.normal(size=3)
            offset *= (r + v[3] * 0.5) / np.linalg.norm(offset)
            centre = np.array(v[:3]) + offset
            kji = np.round(g.to_index(centre) / step).astype(int)
            if (np.any(kji < 0) or np.any(kji >= coarse.shape) or dist[tuple(kji)] < r + 1.0
                    or _inside_z(g, centre, r)[2] != centre[2]):
                attach, cand = "none", np.argwhere(dist > r + 3.0)
            else:
                specs.append({"center_xyz": centre, "diameter_mm": d, "type": kind, "attachment": attach})
                continue
        if cand is None or len(cand) == 0:
            continue
        kji = cand[int(rng.integers(len(cand)))] * step + rng.uniform(-0.5, 0.5, 3) * step
        centre = _inside_z(g, np.array([g.x[0] + kji[2] * g.spacing[2], g.y[0] + kji[1] * g.spacing[1],
                                        g.z[0] + kji[0] * g.spacing[0]]), r)
        specs.append({"center_xyz": centre, "diameter_mm": d, "type": kind, "attachment": attach})
    return specs


def _inside_z(g: _Grid, centre: np.ndarray, radius_mm: float) -> np.ndarray:
    """``centre`` (x, y, z mm) with z moved, where needed, to at least ``radius_mm`` inside the first and last
    slice (to the middle slice when the scan is thinner than the nodule)."""
    limit = max(float(g.half[2]) - radius_mm, 0.0)
    return np.array([centre[0], centre[1], float(np.clip(centre[2], -limit, limit))])


def _draw_nodule(g: _Grid, hu: np.ndarray, labels: np.ndarray, spec: dict, rng: np.random.Generator,
                 index: int) -> NoduleTruth | None:
    d = float(spec["diameter_mm"])
    kind = spec["type"]
    centre = np.asarray(spec["center_xyz"], dtype=np.float64)
    elong = spec.get("elongation", rng.uniform(0.8, 1.0) if d > 5 else 1.0)
    semi = np.array([d / 2 / np.sqrt(elong), d / 2 * np.sqrt(elong), d / 2])
    semi *= (d / 2) / np.cbrt(np.prod(semi))  # equal-volume diameter stays d
    rot = _random_rotation(rng) if spec.get("rotate", True) else np.eye(3)
    lob = float(spec.get("lobulation", rng.uniform(0.0, 0.12) if d > 6 else 0.0))
    phases = np.concatenate([rng.normal(size=(4, 3)), rng.uniform(0, 2 * np.pi, (4, 1))], axis=1)
    b = g.box(centre, float(semi.max()) * (1 + lob) + 1.0)
    if b is None:
        return None
    sl, xx, yy, zz = b
    q = _nodule_shape(xx, yy, zz, semi, rot, lob, phases)
    outer = q <= 1.0
    if not outer.any():
        return None
    solid_frac = 0.0
    region = hu[sl]
    if kind == "solid":
        region[outer] = rng.uniform(10, 70)
        solid_frac = 1.0
    else:
        region[outer] = rng.uniform(-680, -560)
        if kind == "part-solid":
            solid_frac = float(spec.get("solid_fraction", rng.uniform(0.4, 0.65)))
            region[q <= solid_frac] = rng.uniform(0, 60)
    lab = labels[sl]
    lab[outer] = index
    kji = g.to_index(centre)
    return NoduleTruth(
        index=index, type=kind, center_lps=(float(centre[0]), float(centre[1]), float(centre[2])),
        center_kji=(float(kji[0]), float(kji[1]), float(kji[2])),
        semi_axes_mm=tuple(float(s) for s in semi), diameter_mm=d, solid_diameter_mm=d * solid_frac,
        attachment=str(spec.get("attachment", "none")),
    )
