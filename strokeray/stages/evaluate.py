"""Evaluate a model bundle on one split of an ingest's shards (the test split by default).

Streams the shards one file at a time, runs the model in this process, and reports the
classifier's slice- and patient-level metrics or the segmenter's IoU, Dice and competition IoU.
Optionally keeps the per-slice predictions (no pixels but RLE masks) for the report's ROC curve,
confusion matrix and overlays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from strokeray.io.shard_schema import tensor_array
from strokeray.learn.metrics import SegmentationMeter, binary_report, patient_level
from strokeray.stages.train import shards_version, split_rows


class EmptySplitError(ValueError):
    """The split holds no slice with a truth for the task (e.g. no masks in the test split)."""


@dataclass
class EvaluationResult:
    task: str
    split: str
    slices: int
    metrics: dict


def run_evaluate(bundle: str, shards: str, split: str = "test", batch_size: int = 32, out: str | None = None,
                 predictions: str | None = None, log=print) -> EvaluationResult:
    """Metrics of ``bundle`` on ``split``; written as JSON to ``out`` when given, and one row per
    slice to the Parquet file ``predictions`` (classifier: id, patient, label, probability;
    segmenter: id, lesion, predicted mask as RLE, truth and predicted lesion pixels)."""
    from strokeray.imaging.rle import encode_rle
    from strokeray.learn.predict import BundlePredictor

    predictor = BundlePredictor(bundle)
    doc, task = predictor.doc, predictor.task
    channels = len(doc["windows"])
    view = doc["preprocess"]["classification" if task == "classify" else "segmentation"]["size"]
    image = "cls_image" if task == "classify" else "seg_image"
    columns = [image, "id", "split"] + (["label", "patient"] if task == "classify" else ["seg_mask", "has_mask", "lesion"])
    fs, base = fsspec.core.url_to_fs(shards)
    probs, labels, patients = [], [], []
    meter = SegmentationMeter(3)
    rows: dict[str, list] = {}
    n = 0
    for path in sorted(fs.glob(f"{base.rstrip('/')}/shards/*.parquet")):
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh, columns=columns)
        table = split_rows(table, split, task)
        for start in range(0, table.num_rows, batch_size):
            part = table.slice(start, batch_size)
            views = tensor_array(part[image], (channels, view, view))
            n += part.num_rows
            rows.setdefault("id", []).extend(part["id"].to_pylist())
            if task == "classify":
                probs.append(predictor.stroke_probability(views))
                labels.append(np.asarray(part["label"]))
                patients.append(np.asarray(part["patient"]))
            else:  # scored at the stored mask's resolution
                pred, truth = predictor.lesion_classes(views), tensor_array(part["seg_mask"], (view, view))
                meter.update(pred, truth)
                rows.setdefault("lesion", []).extend(part["lesion"].to_pylist())
                rows.setdefault("mask_rle", []).extend(encode_rle(m) for m in pred)
                for c, name in ((1, "ischemic"), (2, "hemorrhagic")):
                    rows.setdefault(f"true_{name}_pixels", []).extend((truth == c).reshape(len(pred), -1).sum(1).tolist())
                    rows.setdefault(f"pred_{name}_pixels", []).extend((pred == c).reshape(len(pred), -1).sum(1).tolist())
    if n == 0:
        raise EmptySplitError(f"{shards} has no {split} slices with a truth for the {task} task")
    if task == "classify":
        prob, lab, pat = np.concatenate(probs), np.concatenate(labels), np.concatenate(patients)
        rows.update(patient=pat.tolist(), label=lab.tolist(), probability=prob.tolist())
        metrics = binary_report(lab, prob, predictor.threshold).as_dict("slice_")
        plab, pprob = patient_level(pat, lab, prob)
        metrics.update(binary_report(plab, pprob, predictor.threshold).as_dict("patient_"))
        metrics["threshold"] = predictor.threshold
    else:
        metrics = meter.report()
    result = EvaluationResult(task=task, split=split, slices=n, metrics=metrics)
    if predictions:
        with fsspec.open(predictions, "wb") as fh:
            pq.write_table(pa.table(rows), fh)
    if out:
        with fsspec.open(out, "w") as fh:
            json.dump({"bundle": bundle, "bundle_version": predictor.version, "shards": shards,
                       "shards_version": shards_version(shards), **result.__dict__}, fh, indent=2)
    key = ("slice_accuracy", "slice_auc", "patient_accuracy", "patient_auc") if task == "classify" else (
        "mean_lesion_iou", "competition_iou")
    log(f"[evaluate] {task} on {split} ({n} slices): " + ", ".join(f"{k}={metrics[k]:.3f}" for k in key))
    return result
