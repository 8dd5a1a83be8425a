"""Training-free baselines that evaluate exactly as a model bundle does (same views, same pooling).

``density:<HU>`` is the plain segmenter every learned one must beat on real bleeds: acute blood is
hyperdense (50-90 HU), so every brain pixel at or above the given density is called hemorrhage.
It reads HU back from the brain-window channel of the segmentation view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from strokeray.imaging.overlay import HEMORRHAGIC
from strokeray.imaging.windows import Window
from strokeray.learn.tasks import SEGMENT

PREFIX = "density:"


class DensityThreshold:
    """Hemorrhage wherever the view's brain window reads at least ``min_hu`` (skull is already
    removed from the view); everything else background."""

    task = SEGMENT
    threshold = None

    def __init__(self, min_hu: float, windows: tuple[Window, ...], view_size: int) -> None:
        names = [w.name for w in windows]
        if "brain" not in names:
            raise ValueError(f"the density baseline reads the brain window; these shards have {names}")
        self.channel = names.index("brain")
        self.window = windows[self.channel]
        if not self.window.low <= min_hu < self.window.high:
            raise ValueError(
                f"density {min_hu} HU lies outside the brain window ({self.window.low}, {self.window.high})"
            )
        self.min_hu = float(min_hu)
        self.version = f"density-{min_hu:g}HU"
        self.doc: dict[str, Any] = {"preprocess": {SEGMENT.view: {"size": view_size}}, "windows": names}

    @classmethod
    def parse(cls, spec: str, windows: tuple[Window, ...], view_size: int) -> DensityThreshold | None:
        """The baseline ``spec`` names (``density:50``), or None when it names a bundle."""
        if not spec.startswith(PREFIX):
            return None
        try:
            min_hu = float(spec[len(PREFIX) :])
        except ValueError:
            raise ValueError(f"{spec!r}: expected density:<HU>, e.g. density:50") from None
        return cls(min_hu, windows, view_size)

    def predict(self, views: np.ndarray) -> np.ndarray:
        grey = views[:, self.channel].astype(np.float32)
        hu = self.window.low + grey * (self.window.width / 255.0)
        return np.where(hu >= self.min_hu, HEMORRHAGIC, 0).astype(np.uint8)
