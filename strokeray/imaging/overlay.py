"""Lesion class masks from colour overlays, as the study derived them from TEKNOFEST exports.

An overlay is the greyscale slice with lesions painted in colour. Painted pixels are found by
their chroma (grey pixels have R = G = B) or by difference from the base image; the class comes
from the caller (the layout's class folder) or from the paint's hue.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BACKGROUND, ISCHEMIC, HEMORRHAGIC = 0, 1, 2
CLASS_NAMES = ("background", "ischemic", "hemorrhagic")

# Paint colours our phantom writer uses and the hue rule falls back on: red = blood.
OVERLAY_RGB = {ISCHEMIC: (0, 200, 255), HEMORRHAGIC: (255, 0, 0)}


def painted_pixels(
    overlay_rgb: np.ndarray, base: np.ndarray | None = None, min_chroma: int = 40, min_diff: int = 40
) -> np.ndarray:
    """Boolean mask of painted pixels: colourful ones, or ones that differ from ``base``."""
    rgb = np.asarray(overlay_rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"overlay must be an RGB image, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int16)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    painted = chroma >= min_chroma
    if base is not None:
        grey = np.asarray(base, dtype=np.int16)
        if grey.ndim == 3:
            grey = grey[..., :3].mean(axis=2).astype(np.int16)
        if grey.shape != rgb.shape[:2]:
            raise ValueError(f"base {grey.shape} and overlay {rgb.shape[:2]} differ in size")
        painted |= np.abs(rgb - grey[..., None]).max(axis=2) >= min_diff
    return painted


def lesion_mask_from_overlay(
    overlay_rgb: np.ndarray,
    base: np.ndarray | None = None,
    lesion_class: int | None = None,
    min_chroma: int = 40,
    min_diff: int = 40,
    min_area_px: int = 4,
) -> np.ndarray:
    """A uint8 class mask (0 background, 1 ischemic, 2 hemorrhagic) from a colour overlay.

    Outlined lesions are filled; specks under ``min_area_px`` (JPEG ringing) are dropped. Without
    ``lesion_class``, red-dominant paint is hemorrhagic and any other hue ischemic.
    """
    painted = painted_pixels(overlay_rgb, base, min_chroma, min_diff)
    labels, n = ndimage.label(painted)
    if n:
        sizes = ndimage.sum(painted, labels, index=np.arange(1, n + 1))
        painted = np.isin(labels, 1 + np.flatnonzero(sizes >= min_area_px))
    painted = ndimage.binary_fill_holes(painted)
    out = np.zeros(painted.shape, dtype=np.uint8)
    if lesion_class is not None:
        if lesion_class not in (ISCHEMIC, HEMORRHAGIC):
            raise ValueError(f"lesion_class must be {ISCHEMIC} or {HEMORRHAGIC}, got {lesion_class}")
        out[painted] = lesion_class
        return out
    rgb = np.asarray(overlay_rgb)[..., :3].astype(np.int16)
    red = (rgb[..., 0] > rgb[..., 1] + 30) & (rgb[..., 0] > rgb[..., 2] + 30)
    # A filled outline's interior is grey; give each component the majority hue of its paint.
    labels, n = ndimage.label(painted)
    for i in range(1, n + 1):
        comp = labels == i
        edge = comp & painted_pixels(overlay_rgb, None, min_chroma)
        votes = red[edge] if edge.any() else red[comp]
        out[comp] = HEMORRHAGIC if votes.mean() >= 0.5 else ISCHEMIC
    return out


def paint_overlay(grey: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Paint a class mask over a uint8 greyscale image (the inverse of lesion_mask_from_overlay)."""
    g = np.asarray(grey, dtype=np.float32)
    rgb = np.repeat(g[..., None], 3, axis=2)
    for cls, colour in OVERLAY_RGB.items():
        sel = mask == cls
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.asarray(colour, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
