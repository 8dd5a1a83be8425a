"""Evaluate a model bundle on one split of an ingest's shards (the test split by default).

Streams the shards one file at a time, runs the model in this process, and reports the
classifier's slice- and patient-level metrics or the segmenter's IoU, Dice and competition IoU.
Optionally keeps the per-slice predictions (no pixels but RLE masks) for the report's ROC curve,
confusion matrix and overlays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from strokeray.datasets.shard_set import ShardSet
from strokeray.datasets.slice_context import ORDER_COLUMNS, series_order, stack_neighbours
from strokeray.io.json_files import write_json
from strokeray.io.shard_schema import tensor_array


class EmptySplitError(ValueError):
    """The split holds no slice with a truth for the task (e.g. no masks in the test split)."""


@dataclass
class EvaluationResult:
    task: str
    split: str
    slices: int
    metrics: dict
    intervals: dict = field(default_factory=dict)  # segmenter: pooled IoU/Dice, 95 % patient bootstrap


def prediction_rows(task, part, outputs: np.ndarray, truth: np.ndarray) -> dict[str, list]:
    """The per-slice prediction columns of one batch (no pixels: segmenter masks as RLE)."""
    from strokeray.imaging.rle import encode_rle

    rows: dict[str, list] = {"id": part["id"].to_pylist()}
    if not task.dense:
        rows.update(patient=part["patient"].to_pylist(), label=truth.tolist(), probability=outputs.tolist())
        return rows
    rows.update(
        patient=part["patient"].to_pylist(),
        lesion=part["lesion"].to_pylist(),
        mask_rle=[encode_rle(m) for m in outputs],
    )
    for c, name in list(enumerate(task.class_names))[1:]:
        t, p = (truth == c).reshape(len(outputs), -1), (outputs == c).reshape(len(outputs), -1)
        rows[f"true_{name}_pixels"] = t.sum(1).tolist()
        rows[f"pred_{name}_pixels"] = p.sum(1).tolist()
        rows[f"inter_{name}_pixels"] = (t & p).sum(1).tolist()  # pooled IoU/Dice across runs (crossval)
    return rows


def predict_split(predictor, data: ShardSet, split: str, batch_size: int, meter) -> dict[str, list]:
    """Feed ``meter`` with the predictor's outputs on every ``split`` slice with a truth; the
    per-slice prediction columns. A 2.5-D bundle (``context_slices``) needs whole series, so its
    split is read into memory at once; otherwise one shard at a time."""
    task = predictor.task
    size = predictor.doc["preprocess"][task.view]["size"]  # the bundle's view (masks are scored at it)
    shape = (len(predictor.doc["windows"]), size, size)
    context = int(predictor.doc.get("context_slices", 0))
    wanted = list(dict.fromkeys([task.image_column, "id", "split", "patient", *task.truth_columns]))
    if context:
        table = data.rows(split, task, list(dict.fromkeys([*wanted, *ORDER_COLUMNS])))
        order, groups = series_order({c: table[c].to_numpy(zero_copy_only=False) for c in ORDER_COLUMNS})
        table = table.take(order)
        images = tensor_array(table[task.image_column], shape)
        parts: Iterable = [(table, lambda a, b: stack_neighbours(images, groups, context, np.arange(a, b)))]
    else:  # a generator: one shard in memory at a time
        parts = (
            (t, lambda a, b, t=t: tensor_array(t[task.image_column].slice(a, b - a), shape))
            for t in (task.rows(t, split) for t in data.tables(wanted))
        )
    columns: dict[str, list] = {}
    for table, views in parts:
        for start in range(0, table.num_rows, batch_size):
            part = table.slice(start, batch_size)
            outputs = predictor.predict(views(start, start + part.num_rows))
            truth = task.targets(part[task.target_column], size)
            patients = np.asarray(part["patient"]) if "patient" in part.column_names else None
            meter.update(outputs, truth, {"patient": patients})
            for k, v in prediction_rows(task, part, outputs, truth).items():
                columns.setdefault(k, []).extend(v)
    return columns


def run_evaluate(
    bundle: str,
    shards: str | ShardSet,
    split: str = "test",
    batch_size: int = 32,
    out: str | None = None,
    predictions: str | None = None,
    log=print,
    device: str = "cpu",
) -> EvaluationResult:
    """Metrics of ``bundle`` on ``split``, the model on ``device``; written as JSON to ``out`` when
    given, and one row per slice to the Parquet file ``predictions`` (classifier: id, patient, label,
    probability; segmenter: id, patient, lesion, predicted mask as RLE, truth, predicted and
    overlapping lesion pixels per class)."""
    from strokeray.learn.baselines import DensityThreshold
    from strokeray.learn.predict import BundlePredictor

    data = ShardSet.of(shards)
    pre = data.preprocess
    predictor = (
        DensityThreshold.parse(bundle, pre.windows, pre.segmentation.size)  # a training-free baseline
        or BundlePredictor(bundle, device)
    )
    task = predictor.task
    meter = task.val_meter(threshold=predictor.threshold if not task.dense else None)
    columns = predict_split(predictor, data, split, batch_size, meter)
    n = len(columns.get("id", []))
    if n == 0:
        raise EmptySplitError(f"{data.url} has no {split} slices with a truth for the {task.name} task")
    result = EvaluationResult(task=task.name, split=split, slices=n, metrics=meter.report(""))
    if task.dense:
        from strokeray.learn.metrics import overlap_summary

        pooled, intervals = overlap_summary(columns, task.class_names[1:])
        result.intervals = {k: [pooled[k], *v] for k, v in intervals.items()}  # value, low, high
    if predictions:
        with fsspec.open(predictions, "wb") as fh:
            pq.write_table(pa.table(columns), fh)
    if out:
        source = {"bundle": bundle, "bundle_version": predictor.version, "shards": data.url}
        write_json(out, {**source, "shards_version": data.version, **result.__dict__})
    log(
        f"[evaluate] {task.name} on {split} ({n} slices): "
        + ", ".join(f"{k}={result.metrics[k]:.3f}" for k in task.headline)
        + "".join(
            f", {k}={v:.3f} [{lo:.3f}, {hi:.3f}]"
            for k, (v, lo, hi) in result.intervals.items()
            if k.startswith("iou_") and v == v
        )
    )
    return result


def evaluate_on_cluster(
    bundle: str, shards: str | ShardSet, split: str, use_gpu: bool = False, **kwargs
) -> EvaluationResult:
    """``run_evaluate`` as a Ray task that holds a CPU, and with ``use_gpu`` a GPU the model runs on.

    A job's driver may sit on a head that offers no CPU to work (the shipped clusters' heads), and
    a GPU run's model belongs on a GPU; the task goes where the cluster (or its autoscaler) has them.
    """
    import ray

    from strokeray.learn.baselines import PREFIX
    from strokeray.stages.runtime import absolute

    bundle = bundle if bundle.startswith(PREFIX) else absolute(bundle)
    data = shards if isinstance(shards, ShardSet) else absolute(shards)  # tasks run in other folders
    paths = {k: absolute(v) for k, v in kwargs.items() if k in ("out", "predictions") and v}
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, max_retries=2)(run_evaluate)
    return ray.get(
        task.remote(bundle, data, split, **{**kwargs, **paths, "log": print, "device": "cuda" if use_gpu else "cpu"})
    )
