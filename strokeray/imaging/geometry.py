"""Crop boxes in physical units and their resampling, shared by image and mask.

A view is an axis-aligned box in source pixels resampled to a square output. Image and mask go
through the same box, so they stay aligned; the box is kept so predictions map back to the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Box:
    """Integer source-pixel box [row0, row0 + height) x [col0, col0 + width); may exceed the image."""

    row0: int
    col0: int
    height: int
    width: int

    def as_list(self) -> list[int]:
        return [self.row0, self.col0, self.height, self.width]


def box_around(centre_rc: tuple[float, float], side_mm: float, spacing_mm: tuple[float, float]) -> Box:
    """A box ``side_mm`` wide (in both directions, so anisotropic pixels give a non-square box)."""
    row_mm, col_mm = spacing_mm
    h = max(1, int(round(side_mm / row_mm)))
    w = max(1, int(round(side_mm / col_mm)))
    r0 = int(round(centre_rc[0] - h / 2.0))
    c0 = int(round(centre_rc[1] - w / 2.0))
    return Box(r0, c0, h, w)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, col0, row1, col1) of True pixels, end-exclusive; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def crop_padded(image: np.ndarray, box: Box, fill: float) -> np.ndarray:
    """The box's pixels; parts outside the image are ``fill``."""
    h, w = image.shape[:2]
    out = np.full((box.height, box.width) + image.shape[2:], fill, dtype=image.dtype)
    r0, c0 = max(box.row0, 0), max(box.col0, 0)
    r1, c1 = min(box.row0 + box.height, h), min(box.col0 + box.width, w)
    if r1 > r0 and c1 > c0:
        out[r0 - box.row0 : r1 - box.row0, c0 - box.col0 : c1 - box.col0] = image[r0:r1, c0:c1]
    return out


def resample(image: np.ndarray, box: Box, size: int, fill: float, nearest: bool = False) -> np.ndarray:
    """Crop ``box`` (padding with ``fill``) and resize to size x size.

    Images shrink with area averaging (no aliasing of CT noise) and grow bilinearly; masks use
    centre-aligned nearest neighbour, which samples the same pixel centres as the image resize.
    """
    crop = crop_padded(image, box, fill)
    if nearest:
        interp = cv2.INTER_NEAREST_EXACT
    elif box.height > size or box.width > size:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def view_to_source(box: Box, size: int) -> np.ndarray:
    """2x3 affine taking view (x=col, y=row) pixel centres to source pixel coordinates."""
    sx, sy = box.width / size, box.height / size
    return np.array([[sx, 0.0, box.col0 + 0.5 * sx - 0.5], [0.0, sy, box.row0 + 0.5 * sy - 0.5]], dtype=np.float64)


def mask_to_source(view_mask: np.ndarray, box: Box, source_shape: tuple[int, int]) -> np.ndarray:
    """Map a view-space class mask back onto the source pixel grid.

    Each class is interpolated bilinearly as a 0/1 plane and every source pixel takes the class of
    the highest plane: smooth outlines where nearest neighbour gives view-pixel stairs (on the 26
    real CT-ICH bleeds, round-trip IoU at least 0.90 instead of 0.88). Outside the box: background.
    """
    view = np.ascontiguousarray(view_mask)
    affine = view_to_source(box, view.shape[0])  # view -> source; OpenCV inverts it per pixel
    classes = np.unique(view)
    planes = [
        cv2.warpAffine(
            (view == c).astype(np.float32),
            affine,
            (source_shape[1], source_shape[0]),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=float(c == 0),
        )
        for c in classes
    ]
    if 0 not in classes:  # outside the box is background even when the view holds none
        planes.append(
            cv2.warpAffine(
                np.zeros(view.shape, np.float32),
                affine,
                (source_shape[1], source_shape[0]),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=1.0,
            )
        )
        classes = np.append(classes, 0)
    return classes[np.argmax(np.stack(planes), axis=0)].astype(view.dtype)
