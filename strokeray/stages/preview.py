"""Decode and preprocess every slice under a folder and draw what the models will see.

A QA stage: per slice one PNG (source in the brain window | classification view | segmentation
view with its mask painted), a quarantine table for files that cannot be used, and a summary.
It runs in this process, file by file; archive-scale work is the Ray Data ingest's job.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

import cv2
import fsspec
import numpy as np

from strokeray.datasets.teknofest import annotation_candidates, is_annotation, lesion_class_of
from strokeray.imaging.overlay import BACKGROUND, lesion_mask_from_overlay, paint_overlay
from strokeray.imaging.views import PreprocessConfig, preprocess
from strokeray.imaging.windows import BRAIN, apply_window
from strokeray.io.decode import decode_slices
from strokeray.io.errors import DecodeError
from strokeray.io.raster import decode_image, decode_mask_image, encode_png

TILE = 256


@dataclass(frozen=True)
class PreviewConfig:
    """What to preview and how."""

    limit: int | None = None  # stop after this many files (None: all)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


@dataclass
class PreviewSummary:
    files: int = 0
    slices: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    brain_found: int = 0
    with_mask: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _read(fs, path: str) -> bytes:
    with fs.open(path, "rb") as fh:
        return fh.read()


def _mask_for(fs, path: str, lesion_class: int | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The slice's class mask from a MASK or OVERLAY sibling, if one exists."""
    if lesion_class in (None, BACKGROUND):
        return None
    for kind, candidate in annotation_candidates(path):
        if not fs.exists(candidate):
            continue
        data = _read(fs, candidate)
        mask = (
            decode_mask_image(data, lesion_class, candidate)
            if kind == "MASK"
            else lesion_mask_from_overlay(decode_image(data, candidate), lesion_class=lesion_class)
        )
        if mask.shape == shape:
            return mask
    return None


def _tile(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA)


def render_preview(hu: np.ndarray, pre, export: bool) -> np.ndarray:
    """One RGB strip: source (brain window), classification view (windows as RGB), seg view + mask."""
    source = apply_window(hu, BRAIN)
    cls_rgb = np.moveaxis(pre.classification.image[:3], 0, -1) if pre.classification.image.shape[0] >= 3 else np.repeat(pre.classification.image[0][..., None], 3, axis=2)
    seg = pre.segmentation
    seg_rgb = paint_overlay(seg.image[0], seg.mask) if seg.mask is not None else np.repeat(seg.image[0][..., None], 3, axis=2)
    strip = np.concatenate([_tile(np.repeat(source[..., None], 3, axis=2)), _tile(np.ascontiguousarray(cls_rgb)), _tile(seg_rgb)], axis=1)
    if not pre.brain_found:
        cv2.putText(strip, "no brain found", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 200, 0), 1)
    if export:
        cv2.putText(strip, "export (pseudo-HU)", (8, TILE - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 200, 200), 1)
    return strip


def run_preview(src: str, out: str, cfg: PreviewConfig = PreviewConfig()) -> PreviewSummary:
    """Preview every image under ``src`` (local path or fsspec URL) into ``out``."""
    started = time.perf_counter()
    fs, root = fsspec.core.url_to_fs(src)
    out_fs, out_root = fsspec.core.url_to_fs(out)
    out_root = out_root.rstrip("/")
    out_fs.makedirs(f"{out_root}/slices", exist_ok=True)
    files = sorted(p for p in (fs.find(root) if fs.isdir(root) else [root]) if not is_annotation(p))
    files = [p for p in files if not p.endswith((".json", ".csv", ".tsv", ".txt", ".md"))]
    if cfg.limit is not None:
        files = files[: cfg.limit]
    summary = PreviewSummary()
    quarantine: list[dict] = []
    for path in files:
        summary.files += 1
        rel = str(PurePosixPath(path).relative_to(root.rstrip("/"))) if path != root else PurePosixPath(path).name
        try:
            slices = decode_slices(_read(fs, path), rel)
        except DecodeError as err:
            summary.quarantined += 1
            summary.reasons[err.reason.value] = summary.reasons.get(err.reason.value, 0) + 1
            quarantine.append({"source": rel, "stage": "decode", "reason": err.reason.value, "detail": err.detail})
            continue
        lesion_class = lesion_class_of(rel)
        for ct in slices:
            mask = _mask_for(fs, path, lesion_class, ct.shape) if ct.n_frames == 1 else None
            pre = preprocess(ct.hu, ct.spacing_mm, mask, cfg.preprocess, ct.export_window)
            summary.slices += 1
            summary.brain_found += int(pre.brain_found)
            summary.with_mask += int(mask is not None)
            key = str(lesion_class) if lesion_class is not None else "unlabelled"
            summary.per_class[key] = summary.per_class.get(key, 0) + 1
            name = rel.replace("/", "__").rsplit(".", 1)[0] + (f"__f{ct.frame}" if ct.n_frames > 1 else "")
            with out_fs.open(f"{out_root}/slices/{name}.png", "wb") as fh:
                fh.write(encode_png(render_preview(ct.hu, pre, not ct.is_hu)))
    summary.seconds = round(time.perf_counter() - started, 3)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["source", "stage", "reason", "detail"])
    writer.writeheader()
    writer.writerows(quarantine)
    with out_fs.open(f"{out_root}/quarantine.csv", "w") as fh:
        fh.write(text.getvalue())
    with out_fs.open(f"{out_root}/summary.json", "w") as fh:
        fh.write(json.dumps({"source": src, **asdict(summary)}, indent=2))
    return summary
