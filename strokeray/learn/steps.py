"""One training step and one evaluation step per task, shared by the Ray Train loop and the plain
PyTorch loop the training benchmark compares it with (so the two do exactly the same work).

Batches are dicts of numpy arrays as the shards hold them: uint8 images (N, C, H, W), int labels,
uint8 masks (N, H, W). AMP and pinned host memory switch on when the device is a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from strokeray.learn.augment import AugmentConfig, augment_batch
from strokeray.learn.losses import SegLossConfig, segmentation_loss
from strokeray.learn.metrics import SegmentationMeter

IMAGE_COLUMN = {"classify": "cls_image", "segment": "seg_image"}
TARGET_COLUMN = {"classify": "label", "segment": "seg_mask"}


class FitMeter:
    """Quality of the training pass, from the logits each step computes anyway: accuracy for the
    classifier, lesion IoU for the segmenter (on augmented batches, as Keras-style curves show)."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.correct = 0
        self.seen = 0
        self.seg = SegmentationMeter(3)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        pred = logits.argmax(1)
        if self.task == "classify":
            self.correct += int((pred == y).sum())
            self.seen += len(y)
        else:
            self.seg.update(pred.cpu().numpy(), y.cpu().numpy())

    def merge(self, other: "FitMeter") -> None:
        self.correct += other.correct
        self.seen += other.seen
        self.seg.merge(other.seg)

    def report(self) -> dict[str, float]:
        if self.task == "classify":
            return {"train_accuracy": self.correct / self.seen if self.seen else float("nan")}
        rep = self.seg.report()
        return {"train_mean_lesion_iou": rep["mean_lesion_iou"], "train_competition_iou": rep["competition_iou"]}


@dataclass
class TaskSteps:
    task: str  # classify | segment
    device: torch.device
    input_size: int | None = None  # resize the views (None: as stored)
    augment: AugmentConfig = AugmentConfig()
    seg_loss: SegLossConfig = SegLossConfig()
    class_weights: list[float] | None = None  # the classifier's cross-entropy weights
    seed: int = 0

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self._weights = (torch.tensor(self.class_weights, dtype=torch.float32, device=self.device)
                         if self.class_weights else None)

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(images as float in [0, 1] at the input size, targets as long)."""
        x = self._to_device(batch[IMAGE_COLUMN[self.task]]).float() / 255.0
        y = self._to_device(batch[TARGET_COLUMN[self.task]]).long()
        size = self.input_size
        if size and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            if self.task == "segment":
                y = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
        return x, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "classify":
            return F.cross_entropy(logits.float(), y, weight=self._weights)
        return segmentation_loss(logits, y, self.seg_loss)

    def train_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict,
                   meter: FitMeter | None = None) -> tuple[float, int]:
        """Augment, forward, backward, step; returns (summed loss, images). ``meter`` sees the logits."""
        x, y = self.inputs(batch)
        x, aug_y = augment_batch(x, y if self.task == "segment" else None, self.augment, self.generator)
        if self.task == "segment":
            y = aug_y
        with torch.autocast(self.device.type, enabled=self.use_amp):
            logits = model(x)
            loss = self.loss(logits, y)
        if meter is not None:
            meter.update(logits.detach(), y)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        return float(loss.detach()) * len(x), len(x)

    @torch.no_grad()
    def recalibrate_bn(self, model: torch.nn.Module, batches) -> int:
        """Re-estimate every BatchNorm's running statistics with the current weights ("precise BN").

        The running averages lag behind weights that move fast, which on small sets (a few steps
        per epoch) makes eval-mode outputs collapse to one class while training mode is right.
        torch's ``update_bn`` averages un-augmented training batches cumulatively; around it, the
        batches are turned into inputs under autocast, and with none the old statistics are kept
        (``update_bn`` would leave them reset). Returns the images seen.
        """
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return 0
        saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
        seen = 0

        def images():
            nonlocal seen
            for batch in batches:
                x, _ = self.inputs(batch)
                seen += len(x)
                yield x

        with torch.autocast(self.device.type, enabled=self.use_amp):
            update_bn(images(), model)
        if not seen:
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        return seen

    @torch.no_grad()
    def eval_step(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(logits, targets, summed loss) of a batch, without augmentation."""
        x, y = self.inputs(batch)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            logits = model(x)
        return logits, y, float(self.loss(logits, y)) * len(x)
