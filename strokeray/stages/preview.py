"""Decode and preprocess every slice of a source and draw what the models will see.

A QA stage: per slice one PNG (source in the brain window | classification view | segmentation
view with its mask painted), a quarantine table for files that cannot be used, and a summary.
It lists, labels and reads files exactly as ingest does (``list_inputs``, ``label_listing``,
``records_for``), so archives work and a preview shows ingest's own masks and quarantine reasons;
it runs in this process, file by file, since archive-scale work is the Ray Data ingest's job.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from strokeray.checks import check_positive
from strokeray.datasets.layouts import label_listing
from strokeray.datasets.slice_records import RecordConfig, records_for
from strokeray.imaging.overlay import paint_overlay
from strokeray.io.raster import encode_png
from strokeray.io.sources import list_inputs
from strokeray.stages.stage_dir import StageDir

TILE = 256
PREVIEW_OUTPUTS = ("slices", "quarantine.csv", "summary.json")  # summary.json last


@dataclass(frozen=True)
class PreviewConfig:
    """What to preview and how."""

    limit: int | None = None  # stop after this many files (None: all)
    records: RecordConfig = field(default_factory=RecordConfig)

    def __post_init__(self) -> None:
        check_positive(limit=self.limit)


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


def _tile(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA)


def _rgb(channels: np.ndarray) -> np.ndarray:
    """A (C, H, W) view as RGB: its first three windows, or its first one in grey."""
    if channels.shape[0] >= 3:
        return np.ascontiguousarray(np.moveaxis(channels[:3], 0, -1))
    return np.repeat(channels[0][..., None], 3, axis=2)


def render_preview(record: dict) -> np.ndarray:
    """One RGB strip of a shard record (with ``source_image``): source, classification view, seg view + mask."""
    source = np.repeat(record["source_image"][..., None], 3, axis=2)
    seg = paint_overlay(record["seg_image"][0], record["seg_mask"]) if record["has_mask"] else _rgb(record["seg_image"])
    strip = np.concatenate([_tile(source), _tile(_rgb(record["cls_image"])), _tile(seg)], axis=1)
    if not record["brain_found"]:
        cv2.putText(strip, "no brain found", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 200, 0), 1)
    if not record["is_hu"]:
        cv2.putText(strip, "export (pseudo-HU)", (8, TILE - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 200, 200), 1)
    return strip


def run_preview(src: str, out: str, cfg: PreviewConfig = PreviewConfig()) -> PreviewSummary:
    """Preview every image under ``src`` (local path, archive or fsspec URL) into ``out``."""
    started = time.perf_counter()
    stage = StageDir(out, "preview", PREVIEW_OUTPUTS, done="summary.json")
    stage.claim([src])
    fs = stage.fs
    fs.makedirs(stage.path("slices"), exist_ok=True)
    listing = list_inputs(src)
    rows = label_listing(listing.entries).rows[: cfg.limit]
    quarantine = [
        {"source": p.source, "stage": "list", "reason": p.reason, "detail": p.detail} for p in listing.problems
    ]
    summary = PreviewSummary(files=len(rows))
    for row in rows:
        records, problems = records_for({**asdict(row), "group": "", "split": ""}, cfg.records, with_source=True)
        quarantine.extend(problems)
        for rec in records:
            summary.slices += 1
            summary.brain_found += int(rec["brain_found"])
            summary.with_mask += int(rec["has_mask"])
            key = str(rec["lesion"]) if rec["lesion"] >= 0 else "unlabelled"
            summary.per_class[key] = summary.per_class.get(key, 0) + 1
            name = row.name.replace("/", "__").rsplit(".", 1)[0] + (f"__f{rec['frame']}" if rec["frame"] else "")
            with fs.open(stage.path("slices", f"{name}.png"), "wb") as fh:
                fh.write(encode_png(render_preview(rec)))
    summary.quarantined = len(quarantine)
    for q in quarantine:
        summary.reasons[q["reason"]] = summary.reasons.get(q["reason"], 0) + 1
    summary.seconds = round(time.perf_counter() - started, 3)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["source", "stage", "reason", "detail"])
    writer.writeheader()
    writer.writerows(quarantine)
    with fs.open(stage.path("quarantine.csv"), "w") as fh:
        fh.write(text.getvalue())
    stage.finish({"source": src, **asdict(summary)})
    return summary
