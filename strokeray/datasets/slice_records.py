"""One manifest row in, shard records (one per slice) and quarantine records out.

This is the whole per-file work of ingest: read, decode, attach the mask, preprocess. It never
raises for bad input: a file that cannot be used becomes a quarantine record with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from strokeray.datasets.layouts import DEFERRED_RULE
from strokeray.imaging.overlay import BACKGROUND, lesion_mask_from_overlay
from strokeray.imaging.views import PreprocessConfig, preprocess
from strokeray.imaging.windows import BRAIN, apply_window
from strokeray.io.decode import decode_slices, is_raster
from strokeray.io.dicom_decode import DecodeConfig, decode_dicom_mask
from strokeray.io.errors import DecodeError
from strokeray.io.raster import decode_image, decode_mask_image
from strokeray.io.sources import SourceError, SourceUnavailable, read_bytes


@dataclass(frozen=True)
class RecordConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _quarantine(source: str, stage: str, reason: str, detail: str) -> dict:
    return {"source": source, "stage": stage, "reason": reason, "detail": detail[:500]}


def _mask(row: dict, shape: tuple[int, int]) -> tuple[np.ndarray | None, dict | None]:
    """The row's lesion mask on the slice grid, or a quarantine record explaining why not."""
    if not row.get("mask_uri"):
        return None, None
    lesion = int(row["lesion"]) if int(row["lesion"]) > BACKGROUND else None
    try:
        data = read_bytes(row["mask_uri"])
        if row.get("mask_kind") == "OVERLAY":
            mask = lesion_mask_from_overlay(decode_image(data, row["mask_uri"]), lesion_class=lesion)
        elif not is_raster(data, row["mask_uri"]):  # a DICOM mask: binary, its class from the row
            if lesion is None:
                return None, _quarantine(
                    row["name"],
                    "mask",
                    "mask_without_lesion_class",
                    "a binary DICOM mask needs the lesion class it marks (--mask-lesion, or a"
                    " labels CSV lesion column)",
                )
            mask = decode_dicom_mask(data, row["mask_uri"]).astype(np.uint8) * np.uint8(lesion)
        else:
            mask = decode_mask_image(data, lesion, row["mask_uri"])
    except DecodeError as err:
        return None, _quarantine(row["name"], "mask", err.reason.value, err.detail)
    except SourceError as err:
        return None, _quarantine(row["name"], "mask", err.reason, err.detail)
    if mask.shape != shape:
        return None, _quarantine(row["name"], "mask", "mask_mismatch", f"mask {mask.shape} vs image {shape}")
    return mask, None


def _patient(row: dict, dicom_key: str) -> str:
    """The split's group, so that every reader groups patients as the split did (a labels CSV may
    merge or rename patients); the decoded PatientID's key where the manifest left it to decoding
    (the group is then only the file-name rule's fallback) or found none."""
    if row.get("group_rule") == DEFERRED_RULE:
        return dicom_key or row["group"]
    return row["group"] or dicom_key


def records_for(
    row: dict, cfg: RecordConfig = RecordConfig(), with_source: bool = False
) -> tuple[list[dict], list[dict]]:
    """Shard records and quarantine records for one manifest row; raises only SourceUnavailable.

    Failures nobody foresaw become ``unexpected_error`` rows naming the exception (and a memory
    error ``out_of_memory``): one odd file must not stop the other files of its task. A source
    that cannot serve (a PACS down) is no fault of the file: it stops the task, and the run.
    ``with_source`` adds ``source_image``, the whole source slice in the brain window (previews).
    """
    try:
        return _records(row, cfg, with_source)
    except MemoryError as err:
        return [], [_quarantine(row["name"], "decode", "out_of_memory", f"MemoryError: {err}")]
    except SourceUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - the per-file safety net
        return [], [_quarantine(row["name"], "decode", "unexpected_error", f"{type(err).__name__}: {err}")]


def _records(row: dict, cfg: RecordConfig, with_source: bool) -> tuple[list[dict], list[dict]]:
    name = row["name"]
    try:
        data = read_bytes(row["uri"])
    except SourceError as err:
        return [], [_quarantine(name, "read", err.reason, err.detail)]
    try:
        slices = decode_slices(data, name, cfg.decode)
    except DecodeError as err:
        return [], [_quarantine(name, "decode", err.reason.value, err.detail)]
    records: list[dict] = []
    problems: list[dict] = []
    mask = None
    if len(slices) == 1:
        mask, problem = _mask(row, slices[0].shape)
        if problem:
            problems.append(problem)
    for ct in slices:
        try:
            pre = preprocess(ct.hu, ct.spacing_mm, mask, cfg.preprocess, ct.export_window)
        except (ValueError, MemoryError) as err:  # odd geometry the views cannot take
            problems.append(_quarantine(name, "preprocess", "preprocess_failed", f"frame {ct.frame}: {err}"))
            continue
        seg = pre.segmentation
        records.append(
            {
                "id": ct.instance_key,
                "source": name,
                "patient": _patient(row, ct.patient_key),
                "study": ct.study_key,
                "series": ct.series_key,
                "split": row["split"],
                "label": int(row["label"]),
                "lesion": int(row["lesion"]),
                "has_mask": mask is not None,
                "instance_number": -1 if ct.instance_number is None else int(ct.instance_number),
                "frame": int(ct.frame),
                "z_mm": _nan(ct.position_mm[2] if ct.position_mm else None),
                "source_spacing_mm": _nan(ct.spacing_mm[0] if ct.spacing_mm else None),
                "thickness_mm": _nan(ct.thickness_mm),
                "cls_spacing_mm": _nan(pre.classification.spacing_mm),
                "seg_spacing_mm": _nan(seg.spacing_mm),
                "is_hu": bool(ct.is_hu),
                "hu_rule": ct.hu_rule,
                "transfer_syntax": ct.transfer_syntax,
                "brain_found": bool(pre.brain_found),
                "brain_area_mm2": _nan(pre.brain_area_mm2),
                "seg_box": np.asarray(seg.box.as_list(), dtype=np.int32),
                "cls_box": np.asarray(pre.classification.box.as_list(), dtype=np.int32),
                "source_shape": np.asarray(ct.hu.shape[:2], dtype=np.int32),
                "cls_image": pre.classification.image,
                "seg_image": seg.image,
                "seg_mask": seg.mask if seg.mask is not None else np.zeros(seg.image.shape[1:], np.uint8),
            }
        )
        if with_source:
            records[-1]["source_image"] = apply_window(ct.hu, BRAIN)
    return records, problems


def stack_records(records: list[dict]) -> dict[str, np.ndarray]:
    """Column arrays (tensors stacked on a new first axis) for a non-empty batch of records."""
    return {
        key: (np.stack if isinstance(records[0][key], np.ndarray) else np.asarray)([r[key] for r in records])
        for key in records[0]
    }
