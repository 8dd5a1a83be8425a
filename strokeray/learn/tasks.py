"""The learning tasks as objects: everything that differs between the slice classifier and the
lesion segmenter (shard columns, class names, loss, default metric, meters, bundle fields) lives
here, so the stages run one code path and never branch on a task's name.

Meters share one protocol: ``update(outputs, targets, batch)`` with numpy outputs of
``Task.outputs`` (P(stroke) per slice, or a class map per pixel), ``merge`` (one meter per
training worker), ``report(prefix)``. They are plain picklable objects (gathered across workers).
The training pass's fit meters count on the device instead (``learn.fit_meters``: ``update(logits,
targets)``) and become such a meter with ``host()`` when the epoch ends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from strokeray.imaging.overlay import CLASS_NAMES as LESION_CLASSES
from strokeray.learn.fit_meters import DeviceAccuracy, DeviceLesionCounts
from strokeray.learn.losses import SegLossConfig, segmentation_loss
from strokeray.learn.metrics import SegmentationMeter, binary_report, operating_threshold, patient_level

ALL_SPLITS = "all"  # evaluate on every split: a shard set no model was trained on (external test data)


class AccuracyMeter:
    """Slice accuracy at 0.5 (the classifier's fit on augmented training batches)."""

    def __init__(self) -> None:
        self.correct = 0
        self.seen = 0

    def update(self, prob: np.ndarray, y: np.ndarray, batch: dict | None = None) -> None:
        self.correct += int(((prob >= 0.5) == (y == 1)).sum())
        self.seen += len(y)

    def merge(self, other: AccuracyMeter) -> None:
        self.correct += other.correct
        self.seen += other.seen

    def report(self, prefix: str = "train_") -> dict[str, float]:
        return {f"{prefix}accuracy": self.correct / self.seen if self.seen else float("nan")}


class BinaryOutputs:
    """Every slice's P(stroke), label and patient: slice- and patient-level metrics at the end.

    ``threshold`` None chooses the operating point on these outputs (validation: the one the bundle
    carries, reported as ``<prefix>threshold``; accuracy stays at 0.5, comparable across epochs);
    a number scores at it (evaluation, slice_/patient_ metrics).
    """

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, prob: np.ndarray, y: np.ndarray, batch: dict) -> None:
        self.parts.append((np.asarray(prob, np.float64), np.asarray(y), np.asarray(batch["patient"])))

    def merge(self, other: BinaryOutputs) -> None:
        self.parts += other.parts

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, labels, patients) in update order."""
        if not self.parts:
            return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, object)
        return tuple(np.concatenate([p[i] for p in self.parts]) for i in range(3))  # type: ignore[return-value]

    def report(self, prefix: str = "val_") -> dict[str, float]:
        prob, lab, pat = self.arrays()
        if not len(prob):
            return {}
        plab, pprob = patient_level(pat, lab, prob)
        if self.threshold is None:
            out = binary_report(lab, prob).as_dict(prefix)
            out.update(binary_report(plab, pprob).as_dict(f"{prefix}patient_"))
            out[f"{prefix}threshold"] = operating_threshold(lab, prob)
            return out
        out = binary_report(lab, prob, self.threshold).as_dict(f"{prefix}slice_")
        out.update(binary_report(plab, pprob, self.threshold).as_dict(f"{prefix}patient_"))
        out[f"{prefix}threshold"] = self.threshold
        return out


class LesionMeter(SegmentationMeter):
    """Per-class IoU / Dice and the competition IoU over class maps, with the meter protocol."""

    def __init__(self, class_names: tuple[str, ...], fit: bool = False) -> None:
        super().__init__(len(class_names))
        self.names = class_names
        self.fit = fit  # the training pass reports only the lesion summaries

    def update(self, pred: np.ndarray, true: np.ndarray, batch: dict | None = None) -> None:  # type: ignore[override]
        super().update(pred, true)

    def report(self, prefix: str | None = None) -> dict[str, float]:  # type: ignore[override]
        prefix = ("train_" if self.fit else "val_") if prefix is None else prefix
        rep = super().report(self.names)
        if self.fit:
            rep = {k: rep[k] for k in ("mean_lesion_iou", "competition_iou")}
        return {f"{prefix}{k}": v for k, v in rep.items()}


@dataclass(frozen=True)
class Task(ABC):
    """What one learning task reads from the shards, optimises, measures and bundles; the
    subclasses (Classification, Segmentation) implement the abstract parts."""

    name: str  # the CLI's and the configs' word for it
    title: str  # for logs and the report
    view: str  # the preprocessing view it reads: PreprocessConfig.classification | .segmentation
    image_column: str
    target_column: str
    truth_columns: tuple[str, ...]  # columns besides image and split that decide and carry the truth
    class_names: tuple[str, ...]
    score_metric: str  # the validation metric that picks checkpoints and trials by default
    fit_metric: str  # the metric both the training pass (train_) and validation (val_) report
    headline: tuple[str, ...]  # evaluation metrics a log line shows
    default_backbone: str
    search_backbones: tuple[str, ...]  # a search's default candidates
    stratum_column: str = "label"  # a patient's class for stratified splits and folds: its highest value

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dense(self) -> bool:
        """Per-pixel targets: geometric augmentation and resizing move them with the image."""
        return self.target_column.endswith("mask")

    @property
    def columns(self) -> tuple[str, ...]:
        """The shard columns training reads."""
        return (self.image_column, *self.truth_columns, "split")

    @abstractmethod
    def has_truth(self, table: pa.Table) -> pa.Array:
        """Implemented by each task."""

    def rows(self, table: pa.Table, split: str) -> pa.Table:
        """The rows of a shard table in ``split`` (``all``: every split) that carry a truth for this task."""
        if split == ALL_SPLITS:
            return table.filter(self.has_truth(table))
        return table.filter(pc.and_(pc.equal(table["split"], split), self.has_truth(table)))

    @abstractmethod
    def targets(self, column: pa.ChunkedArray, size: int) -> np.ndarray:
        """Implemented by each task."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None,
             seg_loss: SegLossConfig) -> torch.Tensor:
        """The training loss of a batch."""

    @abstractmethod
    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        """What the meters and predictions take from a batch of logits, as numpy."""

    @abstractmethod
    def fit_meter(self):
        """Implemented by each task."""

    @abstractmethod
    def val_meter(self, threshold: float | None = None):
        """Implemented by each task."""

    def bundle_fields(self, metrics: dict) -> dict:
        """Task-specific entries of a bundle's model.json."""
        return {}


class Classification(Task):
    def has_truth(self, table: pa.Table) -> pa.Array:
        return pc.greater_equal(table["label"], 0)

    def targets(self, column: pa.ChunkedArray, size: int) -> np.ndarray:
        return np.asarray(column, dtype=np.int64)

    def loss(self, logits, y, class_weights=None, seg_loss=SegLossConfig()):
        return F.cross_entropy(logits.float(), y, weight=class_weights)

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        return logits.float().softmax(1)[:, 1].cpu().numpy()

    def fit_meter(self) -> DeviceAccuracy:
        return DeviceAccuracy()

    def val_meter(self, threshold: float | None = None) -> BinaryOutputs:
        return BinaryOutputs(threshold)

    def bundle_fields(self, metrics: dict) -> dict:
        # the decision threshold, chosen on the validation split (Youden's J)
        return {"threshold": float(metrics.get("val_threshold", 0.5))}


class Segmentation(Task):
    def has_truth(self, table: pa.Table) -> pa.Array:
        # annotated slices, and slices known to hold no lesion (an all-background truth)
        return pc.or_(table["has_mask"], pc.equal(table["lesion"], 0))

    def targets(self, column: pa.ChunkedArray, size: int) -> np.ndarray:
        from strokeray.io.shard_schema import tensor_array

        return tensor_array(column, (size, size))

    def loss(self, logits, y, class_weights=None, seg_loss=SegLossConfig()):
        return segmentation_loss(logits, y, seg_loss)

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        return logits.argmax(1).cpu().numpy()

    def fit_meter(self) -> DeviceLesionCounts:
        return DeviceLesionCounts(self.class_names)

    def val_meter(self, threshold: float | None = None) -> LesionMeter:
        return LesionMeter(self.class_names)


CLASSIFY = Classification(
    name="classify", title="Classifier", view="classification", image_column="cls_image", target_column="label",
    truth_columns=("label", "patient"), class_names=("non-stroke", "stroke"), score_metric="val_accuracy", fit_metric="accuracy",
    headline=("slice_accuracy", "slice_auc", "patient_accuracy", "patient_auc"), default_backbone="vgg16",
    search_backbones=("resnet18", "efficientnet_b0"))
SEGMENT = Segmentation(
    name="segment", title="Segmenter", view="segmentation", image_column="seg_image", target_column="seg_mask",
    truth_columns=("seg_mask", "has_mask", "lesion"), class_names=LESION_CLASSES,
    score_metric="val_competition_iou", fit_metric="mean_lesion_iou", headline=("mean_lesion_iou", "competition_iou"),
    default_backbone="resnet34", search_backbones=("resnet18", "resnet34"), stratum_column="lesion")
TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFY, SEGMENT)}
LESION_NAMES = dict(list(enumerate(SEGMENT.class_names))[1:])  # lesion code -> name: 1 ischemic, 2 hemorrhagic


def get_task(task: str | Task) -> Task:
    """The task called ``task`` (a Task passes through); a clear error for any other name."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]
