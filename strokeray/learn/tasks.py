"""The learning tasks as objects: everything that differs between the slice classifier and the
lesion segmenter (shard columns, class names, loss, default metric, meters, bundle fields) lives
here, so the stages run one code path and never branch on a task's name.

Each task picks its meters: ``learn.meters`` (numpy, fed ``Task.outputs``: P(stroke) per slice, or
a class map per pixel) for validation, ``learn.fit_meters`` (counts on the device) for the
training pass.
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
from strokeray.learn.meters import BinaryOutputs, LesionMeter

ALL_SPLITS = "all"  # evaluate on every split: a shard set no model was trained on (external test data)


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
    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None, seg_loss: SegLossConfig
    ) -> torch.Tensor:
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
    name="classify",
    title="Classifier",
    view="classification",
    image_column="cls_image",
    target_column="label",
    truth_columns=("label", "patient"),
    class_names=("non-stroke", "stroke"),
    score_metric="val_accuracy",
    fit_metric="accuracy",
    headline=("slice_accuracy", "slice_auc", "patient_accuracy", "patient_auc"),
    default_backbone="vgg16",
    search_backbones=("resnet18", "efficientnet_b0"),
)
SEGMENT = Segmentation(
    name="segment",
    title="Segmenter",
    view="segmentation",
    image_column="seg_image",
    target_column="seg_mask",
    truth_columns=("seg_mask", "has_mask", "lesion"),
    class_names=LESION_CLASSES,
    score_metric="val_competition_iou",
    fit_metric="mean_lesion_iou",
    headline=("mean_lesion_iou", "competition_iou"),
    default_backbone="resnet34",
    search_backbones=("resnet18", "resnet34"),
    stratum_column="lesion",
)
TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFY, SEGMENT)}
LESION_NAMES = dict(list(enumerate(SEGMENT.class_names))[1:])  # lesion code -> name: 1 ischemic, 2 hemorrhagic


def get_task(task: str | Task) -> Task:
    """The task called ``task`` (a Task passes through); a clear error for any other name."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]
