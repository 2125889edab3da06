"""Procedural PA hand-radiograph phantom whose skeleton matures with bone age, for training and tests.

The anatomy is a left hand in PA projection (thumb towards +x, fingers towards +y) laid out in millimetres
for an adult boy and scaled down for younger children. Maturation follows the order of the Greulich & Pyle
atlas: carpal ossification centres appear (capitate and hamate in the first months, triquetrum ~2.5 y,
lunate ~3.5 y, trapezium/trapezoid/scaphoid ~5.5 y, pisiform ~11 y), phalangeal, metacarpal, radial and ulnar
epiphyses appear, widen to the metaphysis width, cap it, then fuse (the dark physeal line fades). Girls
mature faster: their features appear at ``GIRL_MATURATION_FACTOR`` times earlier bone age, so the same
bone age looks different for a girl and a boy, which is why the network takes sex as a second input.
Each individual's centres also vary a little in timing, so bone age is not perfectly determined by any one
feature.

Pixels are attenuation-like: larger = more attenuation = brighter on a MONOCHROME2 display (bone bright).
Nothing here is anatomy-accurate enough for clinical use; it only reproduces the features a reader uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

GIRL_MATURATION_FACTOR = 1.15
MAX_BONE_AGE_MONTHS = {"M": 216.0, "F": 200.0}
REFERENCE_SIZE = 256  # noise and blur are defined per pixel at this size and scaled for other sizes

# Epiphysis timing for boys in months of bone age: appearance, capping (width = metaphysis), fusion start, end.
_EPIPHYSIS_TIMING = {
    "distal_phalanx": (22.0, 148.0, 162.0, 178.0),
    "middle_phalanx": (30.0, 150.0, 168.0, 184.0),
    "proximal_phalanx": (18.0, 150.0, 170.0, 186.0),
    "metacarpal": (20.0, 150.0, 176.0, 194.0),
    "first_metacarpal": (30.0, 150.0, 172.0, 190.0),
    "radius": (12.0, 160.0, 192.0, 210.0),
    "ulna": (84.0, 170.0, 186.0, 204.0),
}

# Carpal bones, adult boy: centre (x, y) mm, semi-axes (a, b) mm, angle deg, appearance and full size (months).
_CARPALS = {
    "capitate": ((0.0, 24.0), (6.5, 10.0), 0.0, 3.0, 150.0),
    "hamate": ((-11.0, 25.0), (6.5, 8.0), 10.0, 4.0, 160.0),
    "triquetrum": ((-10.0, 12.0), (6.0, 5.5), 0.0, 30.0, 170.0),
    "lunate": ((2.0, 10.0), (6.5, 6.5), 0.0, 42.0, 170.0),
    "trapezium": ((19.0, 24.0), (6.5, 6.0), 30.0, 66.0, 180.0),
    "trapezoid": ((10.0, 27.0), (5.0, 5.5), 0.0, 70.0, 180.0),
    "scaphoid": ((14.0, 12.0), (6.0, 10.0), 35.0, 66.0, 180.0),
    "pisiform": ((-13.0, 9.0), (4.0, 4.0), 0.0, 132.0, 190.0),
}

# Rays, thumb first: metacarpal base (x, y), direction (deg from +y towards +x), metacarpal length,
# phalanx lengths (proximal, middle, distal; thumb has no middle phalanx), shaft radius.
_RAYS = (
    ((21.0, 31.0), 38.0, 44.0, (32.0, 0.0, 24.0), 4.6),
    ((10.0, 35.0), 6.0, 68.0, (40.0, 24.0, 17.0), 4.2),
    ((0.0, 36.0), 0.0, 64.0, (45.0, 28.0, 19.0), 4.3),
    ((-10.0, 34.0), -7.0, 57.0, (42.0, 26.0, 19.0), 3.9),
    ((-19.0, 32.0), -14.0, 52.0, (33.0, 19.0, 17.0), 3.6),
)
_JOINT_MM = 2.5
_PHYSIS_MM = 1.8
_MU_BONE = 0.05  # relative attenuation per mm
_MU_SOFT = 0.011


@dataclass
class PhantomParams:
    """Everything that determines one phantom image (sampled by :func:`sample_params`)."""

    sex: str  # "M" or "F"
    bone_age_months: float
    chronological_age_months: float
    laterality: str = "L"  # "L" renders a left hand, "R" its mirror image
    timing_jitter: dict[str, float] = field(default_factory=dict)  # per-centre multiplicative jitter
    size_factor: float = 1.0
    rotation_deg: float = 0.0
    spread_deg: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    fov_factor: float = 1.25
    offset: tuple[float, float] = (0.0, 0.0)  # fraction of the field of view
    exposure: float = 2.5
    gamma: float = 1.0
    noise: float = 0.02
    background: float = 0.05
    markers: list[tuple[str, float, float]] = field(default_factory=list)  # text, x, y as fractions

    @property
    def maturation(self) -> float:
        """Boy-equivalent maturation age in months that drives the anatomy."""
        return self.bone_age_months * (GIRL_MATURATION_FACTOR if self.sex == "F" else 1.0)


def brush_like_sd(age_months: float) -> float:
    """A smooth stand-in for the spread of bone age around chronological age (months), used for sampling."""
    return float(np.clip(0.7 + 0.075 * age_months, 0.7, 12.0))


def sample_params(rng: np.random.Generator, *, sex: str | None = None, bone_age_months: float | None = None,
                  laterality: str | None = None) -> PhantomParams:
    """Random subject and acquisition; bone age uniform over the model's range unless given."""
    sex = sex or ("M" if rng.random() < 0.5 else "F")
    ba = float(rng.uniform(0.0, MAX_BONE_AGE_MONTHS[sex])) if bone_age_months is None else float(bone_age_months)
    ca = max(0.5, ba - float(rng.normal(0.0, brush_like_sd(ba))))
    centres = list(_EPIPHYSIS_TIMING) + list(_CARPALS)
    markers = []
    lat = laterality or ("L" if rng.random() < 0.5 else "R")
    corner = [(0.05, 0.05), (0.85, 0.05), (0.05, 0.88), (0.85, 0.88)]
    if rng.random() < 0.85:
        x, y = corner[rng.integers(4)]
        markers.append((lat if rng.random() < 0.9 else "LR"[lat == "L"], x, y))
    if rng.random() < 0.5:
        x, y = corner[rng.integers(4)]
        markers.append((str(rng.choice(["PA", "HAND", "BONE AGE", "L HAND", "R HAND", "2019", "ID 0042"])),
                        x * 0.9, y))
    return PhantomParams(
        sex=sex,
        bone_age_months=ba,
        chronological_age_months=ca,
        laterality=lat,
        timing_jitter={name: float(np.exp(rng.normal(0.0, 0.05))) for name in centres},
        size_factor=float(np.exp(rng.normal(0.0, 0.06))),
        rotation_deg=float(rng.uniform(-20.0, 20.0)),
        spread_deg=tuple(float(v) for v in rng.normal(0.0, 3.0, size=5)),
        fov_factor=float(rng.uniform(1.12, 1.45)),
        offset=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))),
        exposure=float(rng.uniform(1.8, 3.4)),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.008, 0.035)),
        background=float(rng.uniform(0.0, 0.12)),
        markers=markers,
    )


def hand_scale(params: PhantomParams) -> float:
    """Linear size of the hand relative to an adult boy's (newborn ~0.38)."""
    m = min(params.bone_age_months * (GIRL_MATURATION_FACTOR if params.sex == "F" else 1.0), 216.0)
    growth = (1.0 - math.exp(-m / 90.0)) / (1.0 - math.exp(-216.0 / 90.0))
    adult = 0.92 if params.sex == "F" else 1.0
    return (0.38 + 0.62 * growth) * adult * params.size_factor


class _Canvas:
    """Pixel grid mapped to hand millimetres; primitives accumulate into bone and soft-tissue maps."""

    def __init__(self, size: int, mm_per_px: float, centre: tuple[float, float], rotation_deg: float, mirror: bool,
                 hand_scale: float):
        self.n = size
        self.hand_scale = hand_scale
        self.mm = mm_per_px
        self.centre = np.asarray(centre, dtype=np.float64)
        t = math.radians(rotation_deg)
        self.rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        self.mirror = mirror
        idx = (np.arange(size, dtype=np.float32) - size / 2 + 0.5) * mm_per_px
        dx, dy = np.meshgrid(idx, -idx)
        qx = self.rot[0, 0] * dx + self.rot[0, 1] * dy + self.centre[0]
        qy = self.rot[1, 0] * dx + self.rot[1, 1] * dy + self.centre[1]
        self.x = (-qx if mirror else qx).astype(np.float32)
        self.y = qy.astype(np.float32)
        self.bone = np.zeros((size, size), np.float32)
        self.soft = np.zeros((size, size), np.float32)

    def window(self, centre: np.ndarray, radius: float) -> tuple[slice, slice] | None:
        """Pixel window covering a hand-space disc, or None when it lies outside the image."""
        q = np.array([-centre[0] if self.mirror else centre[0], centre[1]]) - self.centre
        d = self.rot.T @ q
        col = d[0] / self.mm + self.n / 2 - 0.5
        row = -d[1] / self.mm + self.n / 2 - 0.5
        r = radius / self.mm + 2
        r0, r1 = int(max(0, math.floor(row - r))), int(min(self.n, math.ceil(row + r) + 1))
        c0, c1 = int(max(0, math.floor(col - r))), int(min(self.n, math.ceil(col + r) + 1))
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def tube(self, p0, p1, r0: float, r_shaft: float, r1: float, *, round0: bool, round1: bool,
             density: float = 1.0, target: str = "bone", hollow: bool = True) -> None:
        """A long bone (or soft-tissue cylinder) from p0 to p1 with flared ends; rounded or flat (physis) ends."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        axis = p1 - p0
        length = float(np.linalg.norm(axis))
        if length < 1e-6:
            return
        ux, uy = axis / length
        rmax = max(r0, r1, r_shaft)
        win = self.window((p0 + p1) / 2, length / 2 + rmax * 1.5)
        if win is None:
            return
        x, y = self.x[win] - p0[0], self.y[win] - p0[1]
        u = x * ux + y * uy
        d = -x * uy + y * ux
        t = u / length
        w0 = np.clip(1 - t / 0.3, 0, 1) ** 2
        w1 = np.clip(1 - (1 - t) / 0.3, 0, 1) ** 2
        radius = r_shaft + (r0 - r_shaft) * w0 + (r1 - r_shaft) * w1
        cap0 = np.sqrt(np.clip(1 - (u / (0.6 * r0)) ** 2, 0, 1)) if round0 else 0.0
        cap1 = np.sqrt(np.clip(1 - ((u - length) / (0.6 * r1)) ** 2, 0, 1)) if round1 else 0.0
        radius = np.where(u < 0, radius * cap0, np.where(u > length, radius * cap1, radius))
        outer = 2 * np.sqrt(np.clip(radius**2 - d**2, 0, None))
        if hollow:
            outer = outer - 0.75 * 2 * np.sqrt(np.clip((0.62 * radius) ** 2 - d**2, 0, None))
        if target == "bone":
            self.bone[win] += density * outer
        else:
            np.maximum(self.soft[win], density * outer, out=self.soft[win])

    def ellipsoid(self, centre, a: float, b: float, angle_deg: float, density: float = 1.0) -> None:
        """Projected ellipsoid (carpal bone, epiphysis) with a denser rim; a across, b along the angle."""
        if a <= 0.05 or b <= 0.05:
            return
        centre = np.asarray(centre, float)
        win = self.window(centre, max(a, b) * 1.1)
        if win is None:
            return
        t = math.radians(angle_deg)
        x, y = self.x[win] - centre[0], self.y[win] - centre[1]
        xr = x * math.cos(t) - y * math.sin(t)
        yr = x * math.sin(t) + y * math.cos(t)
        q = (xr / a) ** 2 + (yr / b) ** 2
        depth = min(a, b)
        thick = 2 * depth * np.sqrt(np.clip(1 - q, 0, None))
        inner = 2 * 0.7 * depth * np.sqrt(np.clip(1 - q / 0.49, 0, None))
        self.bone[win] += density * (thick - 0.6 * inner)


def _ramp(m: float, start: float, end: float) -> float:
    return float(np.clip((m - start) / max(end - start, 1e-6), 0.0, 1.0))


def _epiphysis(canvas: _Canvas, m: float, kind: str, jitter: float, shaft_end, outward, r_end: float,
               height: float) -> None:
    """Epiphysis beyond ``shaft_end`` (pointing along unit ``outward``): appears, widens, caps, fuses."""
    app, cap, fus0, fus1 = (v * jitter for v in _EPIPHYSIS_TIMING[kind])
    if m < app:
        return
    ratio = 0.3 + 0.7 * _ramp(m, app, cap) + 0.08 * _ramp(m, cap, fus0)
    a = ratio * r_end
    h = height * (0.45 + 0.55 * _ramp(m, app, cap))
    fused = _ramp(m, fus0, fus1)
    gap = _PHYSIS_MM * canvas.hand_scale
    shaft_end = np.asarray(shaft_end, float)
    outward = np.asarray(outward, float)
    centre = shaft_end + outward * (gap + h / 2)
    angle = math.degrees(math.atan2(outward[0], outward[1]))
    canvas.ellipsoid(centre, a, h / 2, angle)
    if fused > 0:
        canvas.tube(shaft_end - outward * 0.2, shaft_end + outward * (gap + 0.2), min(a, r_end), min(a, r_end),
                    min(a, r_end), round0=False, round1=False, density=0.9 * fused)


def _draw_skeleton(canvas: _Canvas, params: PhantomParams) -> None:
    s = canvas.hand_scale
    m = params.maturation
    jit = params.timing_jitter
    gap = _PHYSIS_MM * s
    # Forearm: radius (thumb side) and ulna, epiphyses at their distal ends.
    for kind, x, r_shaft, r_end, top, height in (("radius", 10.0, 7.5, 13.0, 0.0, 7.0),
                                                  ("ulna", -14.0, 5.0, 7.0, -3.0, 6.0)):
        end = np.array([x * s, top * s])
        canvas.tube((x * s * 1.1, -160 * s), end, r_shaft * s, r_shaft * s, r_end * s,
                    round0=True, round1=False)
        _epiphysis(canvas, m, kind, jit.get(kind, 1.0), end, (0.0, 1.0), r_end * s, height * s)
    # Carpals.
    for name, ((cx, cy), (a, b), angle, app, full) in _CARPALS.items():
        app *= jit.get(name, 1.0)
        if m < app:
            continue
        grown = _ramp(m, app, full * jit.get(name, 1.0)) ** 0.8
        size = 0.2 + 0.8 * grown
        roundish = min(a, b)
        canvas.ellipsoid((cx * s, cy * s), (roundish + (a - roundish) * grown) * size * s,
                         (roundish + (b - roundish) * grown) * size * s, angle)
    # Rays: metacarpal, then phalanges along the same (spread) direction.
    for ray, ((bx, by), direction, mc_len, phalanges, r_shaft) in enumerate(_RAYS):
        t = math.radians(direction + params.spread_deg[ray])
        axis = np.array([math.sin(t), math.cos(t)])
        base = np.array([bx, by]) * s
        rs = r_shaft * s
        r_end = 1.45 * rs
        if ray == 0:  # first metacarpal: epiphysis at its base
            epi_h = 0.5 * r_end
            start = base + axis * (epi_h + gap)
            end = base + axis * mc_len * s
            canvas.tube(start, end, r_end, rs, 1.35 * rs, round0=False, round1=True)
            _epiphysis(canvas, m, "first_metacarpal", jit.get("first_metacarpal", 1.0), start, -axis, r_end,
                       epi_h)
        else:  # metacarpals 2-5: epiphysis is the head at the distal end
            epi_h = 1.0 * r_end
            start = base
            end = base + axis * (mc_len * s - epi_h - gap)
            canvas.tube(start, end, 1.3 * rs, rs, r_end, round0=True, round1=False)
            _epiphysis(canvas, m, "metacarpal", jit.get("metacarpal", 1.0), end, axis, r_end, epi_h)
        cursor = base + axis * (mc_len * s + _JOINT_MM * s)
        names = ("proximal_phalanx", "middle_phalanx", "distal_phalanx")
        for k, (length, kind) in enumerate(zip(phalanges, names)):
            if length <= 0:
                continue
            pr = rs * (1.0, 0.85, 0.72)[k]
            pr_end = 1.4 * pr
            epi_h = 0.5 * pr_end
            shaft_start = cursor + axis * (epi_h + gap)
            shaft_end = cursor + axis * length * s
            tip = 1.15 * pr if k == 2 else 1.25 * pr
            canvas.tube(shaft_start, shaft_end, pr_end, pr, tip, round0=False, round1=True)
            _epiphysis(canvas, m, kind, jit.get(kind, 1.0), shaft_start, -axis, pr_end, epi_h)
            cursor = shaft_end + axis * _JOINT_MM * s
        # Soft tissue of the finger around the phalanges.
        finger_r = 2.0 * rs + 1.5 * s
        canvas.tube(base + axis * mc_len * s * 0.6, cursor + axis * 3 * s, finger_r, finger_r, finger_r * 0.9,
                    round0=True, round1=True, target="soft", hollow=False)
    # Palm, thenar eminence and forearm soft tissue.
    canvas.tube((-3 * s, 8 * s), (0, 66 * s), 33 * s, 33 * s, 31 * s, round0=True, round1=True,
                target="soft", hollow=False, density=0.8)
    canvas.tube((12 * s, 18 * s), (30 * s, 52 * s), 13 * s, 13 * s, 11 * s, round0=True, round1=True,
                target="soft", hollow=False, density=0.8)
    canvas.tube((-2 * s, -170 * s), (-1 * s, 5 * s), 33 * s, 33 * s, 33 * s, round0=False, round1=True,
                target="soft", hollow=False, density=0.9)


def _burn_markers(image: np.ndarray, markers: list[tuple[str, float, float]], value: float) -> None:
    if not markers:
        return
    n = image.shape[0]
    overlay = Image.new("L", (image.shape[1], n), 0)
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default(size=max(8, int(n * 0.06)))
    for text, fx, fy in markers:
        draw.text((fx * image.shape[1], fy * n), text, fill=255, font=font)
    mask = np.asarray(overlay, dtype=np.float32) / 255.0
    np.maximum(image, mask * value, out=image)


def render(params: PhantomParams, size: int = REFERENCE_SIZE, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render ``params`` as a (size, size) float32 image in [0, 1], bone bright (MONOCHROME2 sense).

    ``rng`` draws the noise only, so the same params give the same anatomy at any size.
    """
    rng = rng or np.random.default_rng(0)
    s = hand_scale(params)
    # Visible extent of the hand in mm (forearm stub to fingertips), centred, with margins.
    y_lo, y_hi, x_lo, x_hi = -45 * s, 205 * s, -48 * s, 62 * s
    fov = (y_hi - y_lo) * params.fov_factor
    centre = ((x_lo + x_hi) / 2 + params.offset[0] * fov, (y_lo + y_hi) / 2 + params.offset[1] * fov)
    canvas = _Canvas(size, fov / size, centre, params.rotation_deg, mirror=params.laterality == "R", hand_scale=s)
    _draw_skeleton(canvas, params)
    soft_thickness = canvas.soft * (1.3 - 0.3 * s)  # infants have relatively more soft tissue
    attenuation = _MU_BONE * canvas.bone + _MU_SOFT * soft_thickness
    image = 1.0 - np.exp(-params.exposure * attenuation)
    scale = size / REFERENCE_SIZE
    image = gaussian_filter(image, sigma=0.6 * scale)
    image = params.background + (1.0 - params.background) * image ** params.gamma
    # Heel effect: a gentle exposure gradient along the image rows.
    ramp = np.linspace(-0.04, 0.04, size, dtype=np.float32)[:, None]
    image = image + ramp * image
    sigma = params.noise * scale * (0.5 + 0.5 * np.sqrt(np.clip(1.0 - image, 0, 1)))
    image = image + rng.normal(0.0, 1.0, image.shape).astype(np.float32) * sigma
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    _burn_markers(image, params.markers, 1.0)
    return image


def generate(n: int, seed: int, size: int = REFERENCE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images (n, size, size) float32, bone ages (months) and sexes (1 = male, 0 = female)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size), np.float32)
    ages = np.empty(n, np.float32)
    sexes = np.empty(n, np.float32)
    for k in range(n):
        p = sample_params(rng)
        images[k] = render(p, size, rng)
        ages[k] = p.bone_age_months
        sexes[k] = 1.0 if p.sex == "M" else 0.0
    return images, ages, sexes
