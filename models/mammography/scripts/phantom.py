"""Procedural mammogram phantoms with known BI-RADS density and lesion boxes (synthetic, PHI-free).

Each phantom is a 'For Presentation'-like projection: breast outline by view (CC, MLO with the pectoral
muscle triangle), fibroglandular tissue whose area fraction and texture set the density category A-D, fat
with Cooper's ligaments, optional lesions (round mass, spiculated mass, clustered micro-calcifications) and
detector look (blur, signal-dependent quantum noise, electronic noise, vendor gain/offset, 12-bit storage).

Canonical geometry: the generator draws the chest wall at column 0 (nipple to the right). Images are then
laid out as displayed in screening: a right breast is mirrored so its chest wall is on the image's right edge
(Patient Orientation 'P\\L' for R CC, 'A\\R' for L CC). Lesion boxes are given in the returned image's
pixel coordinates as (row0, col0, row1, col1), inclusive-exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.special import expit

DENSITY_CLASSES = ("A", "B", "C", "D")
# Share of the breast area that is fibroglandular, per BI-RADS density category (4th-edition quartiles).
DENSITY_FRACTION = ((0.05, 0.20), (0.28, 0.45), (0.53, 0.70), (0.78, 0.92))
LESION_TYPES = ("round_mass", "spiculated_mass", "calcifications")
VIEWS = ("CC", "MLO")
LATERALITIES = ("R", "L")


@dataclass
class Phantom:
    """One generated view. ``image`` holds 12-bit stored values, larger = brighter (MONOCHROME2 sense)."""

    image: np.ndarray
    density: int
    view: str
    laterality: str
    lesions: list[dict] = field(default_factory=list)

    @property
    def lesion_present(self) -> bool:
        return bool(self.lesions)

    @property
    def patient_orientation(self) -> list[str]:
        """Row and column directions of the displayed image (DICOM Patient Orientation)."""
        row = "P" if self.laterality == "R" else "A"
        column = ("L" if self.laterality == "R" else "R") if self.view == "CC" else (
            "FL" if self.laterality == "R" else "FR"
        )
        return [row, column]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian-smoothed noise; wide kernels are applied on a coarser grid and upsampled."""
    factor = max(1, int(sigma // 4))
    coarse = tuple(-(-n // factor) for n in shape)
    field_ = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma / factor, mode="reflect")
    if factor > 1:
        field_ = ndimage.zoom(field_, factor, order=1, mode="nearest")[: shape[0], : shape[1]]
    return field_ / (field_.std() + 1e-8)


def _breast_geometry(rng: np.random.Generator, size: int, view: str) -> dict:
    """Breast mask, normalised elliptic radius (0 at chest-wall centre, 1 at skin) and pectoral mask."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rx = rng.uniform(0.62, 0.86)
    power = rng.uniform(1.8, 2.5)
    if view == "CC":
        cy, ry, tilt = rng.uniform(0.46, 0.54), rng.uniform(0.36, 0.46), 0.0
    else:
        cy, ry, tilt = rng.uniform(0.50, 0.58), rng.uniform(0.44, 0.52), rng.uniform(0.10, 0.25)
    yy = y - cy - tilt * x
    radius = ((np.abs(x) / rx) ** power + (np.abs(yy) / ry) ** power) ** (1.0 / power)
    breast = radius <= 1.0
    pectoral = np.zeros_like(breast)
    if view == "MLO":
        width, height = rng.uniform(0.18, 0.34), rng.uniform(0.40, 0.70)
        pectoral = x < width * (1.0 - y / height)
        breast |= pectoral | ((x < 0.25) & (y < cy))
        radius = np.where(breast & (radius > 1.0), 0.99, radius)
    nipple = (cy + tilt * rx, rx)
    return {"breast": breast, "radius": radius, "pectoral": pectoral, "nipple": nipple, "x": x, "y": y}


def _duct_texture(rng: np.random.Generator, geo: dict, size: int) -> np.ndarray:
    """Streaky texture converging on the nipple (noise smoothed along the radial direction)."""
    ny, nx = geo["nipple"]
    dy, dx = geo["y"] - ny, geo["x"] - nx
    angle = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi)
    dist = np.sqrt(dx**2 + dy**2)
    polar = ndimage.gaussian_filter(rng.standard_normal((96, 96)), (0.8, 6.0), mode="wrap")
    polar /= polar.std() + 1e-8
    coords = np.stack([angle * 96, np.clip(dist, 0, 1.2) / 1.2 * 95])  # angle is periodic (grid-wrap)
    texture = ndimage.map_coordinates(polar, coords, order=1, mode="grid-wrap")
    return (texture * np.clip(dist / 0.25, 0, 1)).astype(np.float32)  # fade out the singular nipple point


def _glandular_map(rng: np.random.Generator, geo: dict, size: int, density: int) -> np.ndarray:
    """Soft fibroglandular map in [0, 1] covering the category's share of the breast."""
    inside = geo["breast"] & ~geo["pectoral"]
    prior = np.exp(-(((geo["radius"] - 0.45) / 0.38) ** 2))
    coarse = _smooth_noise(rng, (size, size), size / 14)
    fine = _smooth_noise(rng, (size, size), size / 64)
    ducts = _duct_texture(rng, geo, size)
    patchy = (0.55, 0.45, 0.35, 0.2)[density]  # dense breasts are more homogeneous
    value = 1.6 * prior + patchy * (coarse + 0.6 * fine) + 0.35 * ducts
    fraction = rng.uniform(*DENSITY_FRACTION[density])
    threshold = np.quantile(value[inside], 1.0 - fraction)
    gland = expit((value - threshold) / 0.22) * (0.8 + 0.2 * np.clip(fine, -2, 2) / 2)
    return np.where(inside, gland, 0.0).astype(np.float32)


def _ligaments(rng: np.random.Generator, size: int) -> np.ndarray:
    """Thin curvilinear lines (Cooper's ligaments) as iso-contours of smooth noise."""
    noise = _smooth_noise(rng, (size, size), size / 20)
    return np.exp(-((noise / 0.06) ** 2)).astype(np.float32)


def _place_lesion_centre(rng: np.random.Generator, geo: dict, size: int) -> tuple[float, float]:
    candidates = np.argwhere(geo["breast"] & ~geo["pectoral"] & (geo["radius"] < 0.8) & (geo["x"] > 0.08))
    r, c = candidates[rng.integers(len(candidates))]
    return float(r), float(c)


def _mass(rng: np.random.Generator, size: int, centre: tuple[float, float], spiculated: bool) -> tuple:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    r0, c0 = centre
    radius = rng.uniform(0.022, 0.042) * size if spiculated else rng.uniform(0.03, 0.06) * size
    theta = np.arctan2(y - r0, x - c0)
    lobes = 1.0 + sum(rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    dist = np.sqrt((y - r0) ** 2 + (x - c0) ** 2) / (radius * lobes)
    edge = 0.06 if spiculated else rng.uniform(0.06, 0.15)
    blob = expit((1.0 - dist) / edge)
    extent = radius * 1.15
    if spiculated:
        length = radius * rng.uniform(1.6, 2.6)
        for angle in rng.uniform(0, 2 * np.pi, rng.integers(9, 17)):
            ux, uy = np.cos(angle), np.sin(angle)
            along = (x - c0) * ux + (y - r0) * uy
            across = np.abs(-(x - c0) * uy + (y - r0) * ux)
            seg_len = length * rng.uniform(0.7, 1.0)
            taper = np.clip(1.0 - along / seg_len, 0, 1)
            spicule = np.where((along > 0) & (along < seg_len), np.exp(-((across / 0.8) ** 2)) * taper, 0)
            blob = np.maximum(blob, 0.7 * spicule)
        extent = radius + 0.5 * length
    box = _box(r0, c0, extent, size)
    return blob.astype(np.float32), box


def _calcifications(rng: np.random.Generator, size: int, centre: tuple[float, float]) -> tuple:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    spread = rng.uniform(0.015, 0.035) * size
    count = int(rng.integers(6, 16))
    offsets = rng.normal(0, spread / 2, (count, 2))
    image = np.zeros((size, size), np.float32)
    for dr, dc in offsets:
        sigma = rng.uniform(0.55, 0.9)
        image += rng.uniform(0.7, 1.0) * np.exp(-(((y - centre[0] - dr) ** 2 + (x - centre[1] - dc) ** 2) / (2 * sigma**2)))
    rows, cols = centre[0] + offsets[:, 0], centre[1] + offsets[:, 1]
    box = (
        int(max(0, np.floor(rows.min() - 3))),
        int(max(0, np.floor(cols.min() - 3))),
        int(min(size, np.ceil(rows.max() + 4))),
        int(min(size, np.ceil(cols.max() + 4))),
    )
    return np.clip(image, 0, 1.2), box


def _box(r0: float, c0: float, extent: float, size: int) -> tuple[int, int, int, int]:
    return (
        int(max(0, np.floor(r0 - extent))),
        int(max(0, np.floor(c0 - extent))),
        int(min(size, np.ceil(r0 + extent + 1))),
        int(min(size, np.ceil(c0 + extent + 1))),
    )


def _detector(rng: np.random.Generator, attenuation: np.ndarray) -> np.ndarray:
    """Detector blur, quantum and electronic noise, 'For Presentation' tone curve, 12-bit storage."""
    signal = ndimage.gaussian_filter(attenuation, rng.uniform(0.4, 0.8))
    quantum = rng.uniform(0.008, 0.02)
    noisy = signal + rng.standard_normal(signal.shape) * quantum * np.sqrt(signal + 0.05)
    noisy += ndimage.gaussian_filter(rng.standard_normal(signal.shape), 0.7) * rng.uniform(0.002, 0.006)
    presented = np.clip(noisy, 0, None) ** rng.uniform(0.75, 1.0)
    gain, offset = rng.uniform(3000, 3900), rng.uniform(0, 150)
    return np.clip(np.round(presented * gain + offset), 0, 4095).astype(np.uint16)


def generate_view(
    rng: np.random.Generator,
    *,
    density: int,
    view: str,
    laterality: str,
    lesion: str | None = None,
    size: int = 256,
) -> Phantom:
    """One view of one breast. ``lesion`` is one of LESION_TYPES or None."""
    geo = _breast_geometry(rng, size, view)
    breast = geo["breast"]
    gland = _glandular_map(rng, geo, size, density)
    fine = _smooth_noise(rng, (size, size), 1.2)
    radius = geo["radius"]
    thickness = np.where(breast, np.clip((1.0 - radius) / 0.14, 0, 1) ** 0.5, 0).astype(np.float32)
    thickness = np.maximum(thickness, np.where(geo["pectoral"], 1.0, 0.0))
    fat, dense = rng.uniform(0.26, 0.34), rng.uniform(0.30, 0.40)
    tissue = fat + dense * gland * (1 + 0.08 * fine) + 0.05 * _ligaments(rng, size) * (1 - gland)
    tissue += 0.015 * fine
    pectoral_level = fat + dense * rng.uniform(0.95, 1.2)
    x = geo["x"]
    tissue = np.where(geo["pectoral"], pectoral_level * (1 - 0.2 * x) + 0.01 * fine, tissue)
    attenuation = np.where(breast, thickness * tissue, 0.0).astype(np.float32) + 0.015
    lesions: list[dict] = []
    if lesion is not None:
        centre = _place_lesion_centre(rng, geo, size)
        if lesion == "calcifications":
            shape, box = _calcifications(rng, size, centre)
            amplitude = rng.uniform(0.22, 0.4)
        else:
            shape, box = _mass(rng, size, centre, spiculated=lesion == "spiculated_mass")
            amplitude = rng.uniform(0.10, 0.18)
        attenuation += amplitude * shape * np.where(breast, 1.0, 0.0)
        lesions.append({"type": lesion, "box": box})
    image = _detector(rng, attenuation)
    if laterality == "R":
        image = image[:, ::-1].copy()
        lesions = [{**d, "box": (d["box"][0], size - d["box"][3], d["box"][2], size - d["box"][1])} for d in lesions]
    return Phantom(image=image, density=density, view=view, laterality=laterality, lesions=lesions)


def generate_study(
    rng: np.random.Generator,
    *,
    lesion_probability: float = 0.5,
    density: int | None = None,
    lesion_type: str | None = None,
    size: int = 256,
) -> list[Phantom]:
    """Four views of one woman (R CC, R MLO, L CC, L MLO), one density category (random unless given); with
    ``lesion_probability`` a lesion (of ``lesion_type``, else a random type) in one breast, seen on both of its
    views."""
    density = int(rng.integers(0, 4)) if density is None else density
    lesion_side = rng.choice(LATERALITIES) if rng.random() < lesion_probability else None
    lesion_type = lesion_type or str(rng.choice(LESION_TYPES))
    views = []
    for laterality in LATERALITIES:
        for view in VIEWS:
            lesion = lesion_type if laterality == lesion_side else None
            views.append(generate_view(rng, density=density, view=view, laterality=laterality, lesion=lesion, size=size))
    return views
