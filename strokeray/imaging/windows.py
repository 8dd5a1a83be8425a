"""Hounsfield-unit windows rendered as uint8 image channels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A display window: HU in [level - width/2, level + width/2] maps linearly to 0..255."""

    name: str
    level: float
    width: float

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ValueError(f"window {self.name!r}: width must be positive, got {self.width}")

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0


BRAIN = Window("brain", 40.0, 80.0)
SUBDURAL = Window("subdural", 80.0, 200.0)
# Narrow window that stretches the few HU between grey/white matter and early ischaemia.
STROKE = Window("stroke", 32.0, 24.0)  # 20..44 HU
BONE = Window("bone", 600.0, 2800.0)

DEFAULT_WINDOWS: tuple[Window, ...] = (BRAIN, SUBDURAL, STROKE)

NAMED_WINDOWS = {w.name: w for w in (BRAIN, SUBDURAL, STROKE, BONE)}


def parse_window(spec: str) -> Window:
    """Parse ``name`` (a named window) or ``name:level:width`` into a Window."""
    parts = spec.split(":")
    if len(parts) == 1:
        try:
            return NAMED_WINDOWS[parts[0]]
        except KeyError:
            raise ValueError(
                f"unknown window {spec!r}; named windows: {', '.join(NAMED_WINDOWS)} (or give name:level:width)"
            ) from None
    if len(parts) != 3:
        raise ValueError(f"window spec {spec!r} is not name or name:level:width")
    return Window(parts[0], float(parts[1]), float(parts[2]))


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """One window of an HU image as uint8 (0 below the window, 255 above)."""
    scale = 255.0 / window.width
    out = (np.asarray(hu, dtype=np.float32) - np.float32(window.low)) * np.float32(scale)
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def apply_windows(hu: np.ndarray, windows: tuple[Window, ...] = DEFAULT_WINDOWS) -> np.ndarray:
    """Stack windows of a 2-D HU image into a channels-first uint8 array of shape (C, H, W)."""
    if hu.ndim != 2:
        raise ValueError(f"expected a 2-D HU image, got shape {hu.shape}")
    return np.stack([apply_window(hu, w) for w in windows], axis=0)
