"""Synthetic lesions drawn into a real slice: soft shapes on its brain mask, blended in HU.

Each shape is an alpha map in [0, 1] (1 inside the lesion, a partial-volume ramp at the edge);
the lesion mask is alpha >= 0.5. Hemorrhages are hyperdense (42-72 HU): intraparenchymal blobs,
subdural crescents and epidural lenses along the inner table, intraventricular casts in the CSF
of the ventricles. Infarcts are hypodense (10-25 HU) wedges of a vascular territory that reach the
cortex, the grey-white pattern inside them replaced by one density. The slice's own noise stays on top, so
the lesion has the scanner's texture. Sizes are in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

HEMORRHAGE_KINDS = ("intraparenchymal", "subdural", "epidural", "intraventricular")


@dataclass(frozen=True)
class LesionRanges:
    """What synthetic lesions are drawn from."""

    # A lesion's density, drawn once per lesion: the 26 real CT-ICH bleeds have medians of 39-72 HU
    # (5-95 % of their pixels 34-75 HU). Denser ones would also saturate a 0-80 HU export, which
    # preprocessing then strips as bone.
    hemorrhage_hu: tuple[float, float] = (42.0, 72.0)
    infarct_hu: tuple[float, float] = (10.0, 25.0)
    blob_radius_mm: tuple[float, float] = (5.0, 22.0)
    subdural_mm: tuple[float, float] = (3.0, 10.0)  # greatest thickness
    epidural_mm: tuple[float, float] = (8.0, 20.0)
    edge_mm: float = 0.8  # width of the partial-volume ramp
    csf_below_hu: float = 12.0  # ventricles: this far below the brain's median (smoothed), mid-brain
    min_area_mm2: float = 20.0  # a shape smaller than this (clipped by the brain) is not used


def _ramp(inside: np.ndarray, edge_px: float) -> np.ndarray:
    """A soft alpha from a binary shape (Gaussian edge, ~partial volume)."""
    alpha: np.ndarray = inside.astype(np.float32)
    if edge_px > 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), edge_px)
        alpha[alpha < 0.01] = 0  # the kernel's far tail: leave the rest of the slice exactly as it was
    return alpha


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std noise correlated over ``scale_px`` (lumpy outlines)."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(scale_px, 0.5))
    return noise / (noise.std() + 1e-6)


def _polar(brain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """(angle of each pixel about the brain's centroid, depth below the brain's edge in px,
    distance from the centroid, centroid)."""
    rows, cols = np.nonzero(brain)
    centre = (float(rows.mean()), float(cols.mean()))
    yy, xx = np.mgrid[: brain.shape[0], : brain.shape[1]].astype(np.float32)
    angle = np.arctan2(yy - centre[0], xx - centre[1])
    depth = cv2.distanceTransform(brain.astype(np.uint8), cv2.DIST_L2, 5)
    radius = np.hypot(yy - centre[0], xx - centre[1])
    return angle, depth, radius, centre


def _sector(angle: np.ndarray, middle: float, half_width: float) -> np.ndarray:
    """Position across an angular sector: 0 at its middle, 1 at its edges, above 1 outside."""
    diff = np.abs(np.angle(np.exp(1j * (angle - middle))))
    return diff / half_width


def blob(brain: np.ndarray, rng: np.random.Generator, px_mm: float, r: LesionRanges) -> np.ndarray:
    """An intraparenchymal haematoma: a lumpy ellipse well inside the brain."""
    depth = cv2.distanceTransform(brain.astype(np.uint8), cv2.DIST_L2, 5)
    radius = rng.uniform(*r.blob_radius_mm) / px_mm
    centres = np.argwhere(depth > max(radius * 0.8, 4 / px_mm))
    if not len(centres):
        return np.zeros(brain.shape, bool)
    cy, cx = centres[rng.integers(len(centres))]
    yy, xx = np.mgrid[: brain.shape[0], : brain.shape[1]].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    a, b = radius, radius * rng.uniform(0.5, 1.0)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / a
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / b
    lumps = 0.25 * _smooth_noise(brain.shape, rng, radius / 3)
    return (u * u + v * v + lumps < 1.0) & brain


def crescent(brain: np.ndarray, rng: np.random.Generator, px_mm: float, r: LesionRanges, lens: bool) -> np.ndarray:
    """Blood along the inner table: a long thin crescent (subdural) or a short thick lens (epidural)."""
    angle, depth, _, _ = _polar(brain)
    middle = rng.uniform(-np.pi, np.pi)
    half = rng.uniform(0.25, 0.55) if lens else rng.uniform(0.6, 1.2)  # radians either side
    thick = rng.uniform(*(r.epidural_mm if lens else r.subdural_mm)) / px_mm
    across = _sector(angle, middle, half)
    # Thickness falls to zero at the sector's ends: steeply (lens) or gently (crescent).
    profile = np.clip(1 - across**2, 0, None) ** (0.5 if lens else 1.0)
    rim = 1.5 / px_mm  # the brain mask's outermost ~1.5 mm is partial-volume bone: blood lies inside it
    return brain & (depth >= rim) & (depth < rim + thick * profile)


def ventricle_cast(
    hu: np.ndarray, brain: np.ndarray, rng: np.random.Generator, px_mm: float, r: LesionRanges
) -> np.ndarray:
    """Blood filling part of the ventricles: CSF-dense pixels in the brain's inner half, the
    dependent (lower-row) part of each chosen component. CSF is found relative to the brain's
    median: windowed exports smear its true 0-15 HU upwards."""
    _, depth, radius, _ = _polar(brain)
    inner = brain & (radius < 0.45 * np.sqrt(brain.sum() / np.pi)) & (depth > 6 / px_mm)
    smooth = cv2.GaussianBlur(np.asarray(hu, np.float32), (0, 0), 0.7 / px_mm)
    dark = smooth < np.median(hu[brain]) - r.csf_below_hu
    csf = cv2.morphologyEx(
        (inner & dark).astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    )
    n, labels, stats, _ = cv2.connectedComponentsWithStats(csf, connectivity=8)
    big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] * px_mm * px_mm >= r.min_area_mm2]
    if not big:
        return np.zeros(brain.shape, bool)
    chosen = rng.choice(big, size=min(len(big), int(rng.integers(1, 3))), replace=False)
    out = np.zeros(brain.shape, bool)
    for i in chosen:
        top, height = stats[i, cv2.CC_STAT_TOP], stats[i, cv2.CC_STAT_HEIGHT]
        level = top + height * rng.uniform(0.0, 0.6)  # a fluid level: blood settles below it
        rows = np.arange(brain.shape[0])[:, None]
        out |= (labels == i) & (rows >= level)
    return out


def wedge(brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An infarct: a wedge of a vascular territory, from deep white matter out to the cortex."""
    angle, _, radius, _ = _polar(brain)
    extent = np.sqrt(brain.sum() / np.pi)
    middle = rng.uniform(-np.pi, np.pi)
    half = rng.uniform(0.2, 0.5)
    inner = extent * rng.uniform(0.25, 0.6)
    across = _sector(angle, middle, half)
    lumps = 0.15 * _smooth_noise(brain.shape, rng, extent / 10)
    return brain & (across + lumps < 1.0) & (radius > inner * (1 + 0.3 * across**2))


def blend(
    hu: np.ndarray, alpha: np.ndarray, target_hu: float, flatten: float = 0.0, brain: np.ndarray | None = None
) -> np.ndarray:
    """Move ``hu`` towards ``target_hu`` by ``alpha``, keeping the slice's fine noise.

    The local mean (a 1.5 px blur: anatomy such as the grey-white pattern) is replaced by the target
    and the residual, clipped to +-10 HU, kept, so the lesion has the scanner's noise and not the
    anatomy beneath; ``flatten`` (0-1) also shrinks the residual.
    Only brain pixels are averaged, so bone or air next to a lesion does not leak into it.
    """
    hu = np.asarray(hu, np.float32)
    weight = np.ones_like(hu) if brain is None else brain.astype(np.float32)
    mean = cv2.GaussianBlur(hu * weight, (0, 0), 1.5) / np.maximum(cv2.GaussianBlur(weight, (0, 0), 1.5), 1e-3)
    # Pixel-scale noise only: anatomy (a ventricle's edge, the grey-white pattern) must not show through.
    residual = np.clip(hu - mean, -10, 10) * (1 - flatten * alpha)
    lesion = target_hu + residual
    return (hu * (1 - alpha) + lesion * alpha).astype(np.float32)


def insert_hemorrhage(
    hu: np.ndarray,
    brain: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    px_mm: float,
    r: LesionRanges = LesionRanges(),
) -> tuple[np.ndarray, np.ndarray] | None:
    """(slice with a hemorrhage of ``kind`` drawn in, its boolean mask), or None when the slice
    has no room for one (no ventricles, too little brain)."""
    if kind == "intraparenchymal":
        shape = blob(brain, rng, px_mm, r)
    elif kind in ("subdural", "epidural"):
        shape = crescent(brain, rng, px_mm, r, lens=kind == "epidural")
    elif kind == "intraventricular":
        shape = ventricle_cast(hu, brain, rng, px_mm, r)
    else:
        raise ValueError(f"hemorrhage kind {kind!r} is not one of {HEMORRHAGE_KINDS}")
    # At least 15 HU above the brain's median: a bleed as dense as the brain around it teaches nothing.
    target = max(rng.uniform(*r.hemorrhage_hu), float(np.median(hu[brain])) + 15.0)
    return _finish(hu, shape, brain, target, 0.0, px_mm, r)


def insert_infarct(
    hu: np.ndarray, brain: np.ndarray, rng: np.random.Generator, px_mm: float, r: LesionRanges = LesionRanges()
) -> tuple[np.ndarray, np.ndarray] | None:
    """(slice with an infarct drawn in, its boolean mask), or None when there is no room."""
    return _finish(hu, wedge(brain, rng), brain, rng.uniform(*r.infarct_hu), 0.0, px_mm, r)


def _finish(hu, shape, brain, target, flatten, px_mm, r: LesionRanges):
    # Slivers thinner than the edge ramp would raise density without reaching the mask's 0.5.
    shape = cv2.morphologyEx(
        shape.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    ).astype(bool)
    if shape.sum() * px_mm * px_mm < r.min_area_mm2:
        return None
    alpha = _ramp(shape, r.edge_mm / px_mm) * brain
    out = blend(hu, alpha, target, flatten, brain)
    mask = (alpha >= 0.5) & brain
    return (out, mask) if mask.any() else None
