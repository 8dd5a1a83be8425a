"""The two model inputs made from one HU slice: a centred classification view and an
uncentred segmentation view whose mask goes through exactly the same geometry.

Both cover a fixed physical field of view when pixel spacing is known (so a 0.4 mm or a 716x512
image is resampled, not cropped, and every output pixel has the same size in mm); without
spacing the box fits the brain. The study centred only for classification: so do we.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from strokeray.imaging.brain_mask import BrainMaskConfig, for_export, head_and_brain
from strokeray.imaging.geometry import Box, bbox, box_around, resample
from strokeray.imaging.windows import DEFAULT_WINDOWS, Window, apply_windows

AIR_HU = -1024.0


@dataclass(frozen=True)
class ViewConfig:
    """Geometry of one view."""

    size: int
    fov_mm: float  # side of the square field of view (grown if the brain does not fit)
    centred: bool  # centre of the brain's mass at the image centre (classification only)
    strip_skull: bool = True  # air outside the brain mask; else only outside the head
    margin_mm: float = 6.0  # kept around the brain when the box must grow to fit it


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns an HU slice into model inputs; recorded in every dataset card."""

    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    brain: BrainMaskConfig = field(default_factory=BrainMaskConfig)
    classification: ViewConfig = ViewConfig(size=224, fov_mm=200.0, centred=True)
    segmentation: ViewConfig = ViewConfig(size=256, fov_mm=200.0, centred=False)
    # Used for morphology only when a slice has no pixel spacing (PNG exports, Secondary Capture).
    assumed_spacing_mm: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """The config ``to_dict`` wrote (as recorded in dataset cards and model bundles)."""
        return cls(
            windows=tuple(Window(**w) for w in d["windows"]),
            brain=BrainMaskConfig(**d["brain"]),
            classification=ViewConfig(**d["classification"]),
            segmentation=ViewConfig(**d["segmentation"]),
            assumed_spacing_mm=float(d["assumed_spacing_mm"]),
        )


@dataclass
class View:
    """One view: channels-first uint8 windows, optional class mask, and its source box."""

    image: np.ndarray  # (C, size, size) uint8
    box: Box
    spacing_mm: float | None  # output pixel size (None when the source spacing was unknown)
    mask: np.ndarray | None = None  # (size, size) uint8 classes


@dataclass
class Preprocessed:
    """Both views of one slice plus what the brain mask found."""

    classification: View
    segmentation: View
    brain_found: bool
    brain_area_mm2: float | None  # None when spacing is unknown
    brain_fraction: float  # brain pixels / image pixels, for QA without spacing


def _box(
    brain: np.ndarray,
    fallback: np.ndarray,
    view: ViewConfig,
    spacing: tuple[float, float] | None,
    assumed_mm: float,
) -> Box:
    region = brain if brain.any() else fallback
    bb = bbox(region) or (0, 0, region.shape[0], region.shape[1])
    r0, c0, r1, c1 = bb
    if view.centred:
        rows, cols = np.nonzero(region) if region.any() else (np.array([(r0 + r1) / 2]), np.array([(c0 + c1) / 2]))
        centre = (float(rows.mean()) + 0.5, float(cols.mean()) + 0.5)
        # The box must reach the brain's farthest edge from the centre on each axis.
        half_r = max(centre[0] - r0, r1 - centre[0])
        half_c = max(centre[1] - c0, c1 - centre[1])
        extent_r, extent_c = 2 * half_r, 2 * half_c
    else:
        centre = ((r0 + r1) / 2.0, (c0 + c1) / 2.0)
        extent_r, extent_c = r1 - r0, c1 - c0
    if spacing is None:
        margin_px = view.margin_mm / assumed_mm
        side = max(extent_r, extent_c) + 2 * margin_px
        return box_around(centre, side, (1.0, 1.0))
    side_mm = max(view.fov_mm, extent_r * spacing[0] + 2 * view.margin_mm, extent_c * spacing[1] + 2 * view.margin_mm)
    return box_around(centre, side_mm, spacing)


def make_view(
    hu: np.ndarray,
    keep: np.ndarray,
    brain: np.ndarray,
    head: np.ndarray,
    view: ViewConfig,
    cfg: PreprocessConfig,
    spacing: tuple[float, float] | None,
    mask: np.ndarray | None = None,
) -> View:
    """Resample one view: ``keep`` selects the pixels kept (the rest become air)."""
    box = _box(brain, head, view, spacing, cfg.assumed_spacing_mm)
    cleaned = np.where(keep, hu, np.float32(AIR_HU)).astype(np.float32, copy=False)
    resized = resample(cleaned, box, view.size, fill=AIR_HU)
    image = apply_windows(resized, cfg.windows)
    out_mask = None
    if mask is not None:
        out_mask = resample(np.ascontiguousarray(mask, dtype=np.uint8), box, view.size, fill=0, nearest=True)
    out_spacing = None if spacing is None else box.height * spacing[0] / view.size
    return View(image=image, box=box, spacing_mm=out_spacing, mask=out_mask)


def preprocess(
    hu: np.ndarray,
    spacing_mm: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
    cfg: PreprocessConfig = PreprocessConfig(),
    export_window: tuple[float, float] | None = None,
) -> Preprocessed:
    """Brain mask, skull/noise removal, crop and both views of one HU slice (and its mask).

    ``export_window`` (low, high) marks pseudo-HU from a windowed export, where everything above
    the window (bone and the densest blood alike) is saturated; thresholds adapt to it.
    A lesion mask is cut to the head, never to the brain: a subdural or epidural bleed hugging the
    skull must not be erased by an imperfect brain mask.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 2:
        raise ValueError(f"expected a 2-D HU slice, got shape {hu.shape}")
    if mask is not None and mask.shape != hu.shape:
        raise ValueError(f"mask {mask.shape} and image {hu.shape} differ in shape")
    bcfg = cfg.brain if export_window is None else for_export(cfg.brain, *export_window)
    head, brain = head_and_brain(hu, spacing_mm or (cfg.assumed_spacing_mm,) * 2, bcfg)
    found = bool(brain.any())
    if mask is not None:
        mask = np.where(head, mask, 0).astype(np.uint8)
    views = []
    for view in (cfg.classification, cfg.segmentation):
        # The input never depends on the label: the mask only follows the geometry.
        keep = brain if (view.strip_skull and found) else head
        views.append(
            make_view(hu, keep, brain, head, view, cfg, spacing_mm, mask if view is cfg.segmentation else None)
        )
    area = None if spacing_mm is None else float(brain.sum() * spacing_mm[0] * spacing_mm[1])
    return Preprocessed(
        classification=views[0],
        segmentation=views[1],
        brain_found=found,
        brain_area_mm2=area,
        brain_fraction=float(brain.mean()),
    )
