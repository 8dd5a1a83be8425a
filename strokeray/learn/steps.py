"""One training step and one evaluation step per task, shared by the Ray Train loop and the plain
PyTorch loop the training benchmark compares it with (so the two do exactly the same work).

Batches are dicts of numpy arrays as the shards hold them: uint8 images (N, C, H, W), int labels,
uint8 masks (N, H, W). AMP and pinned host memory switch on when the device is a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from strokeray.learn.accel import to_device, uses_amp
from strokeray.learn.augment import AugmentConfig, augment_batch
from strokeray.learn.losses import SegLossConfig
from strokeray.learn.tasks import Task, get_task


def bn_buffers(m: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A BatchNorm's running mean, running variance and batch count (it must track them)."""
    buffers = (m.running_mean, m.running_var, m.num_batches_tracked)
    if not all(isinstance(b, torch.Tensor) for b in buffers):
        raise ValueError(f"{m} does not track running statistics")
    return buffers  # type: ignore[return-value]


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, epoch: int, epochs: int, warmup_epochs: int = 1, start: float = 0.1) -> float:
    """The learning rate of ``epoch`` as a fraction of the base rate, set once per epoch as
    torchvision's references do: ``cosine`` warms up linearly from ``start`` over
    ``warmup_epochs``, then anneals by a half cosine (never reaching 0 on the last epoch)."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; choose from {LR_SCHEDULES}")
    warmup = min(warmup_epochs, max(epochs - 1, 0))
    if epoch < warmup:
        return start + (1.0 - start) * epoch / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


@dataclass
class TaskSteps:
    task: Task  # (its name is accepted too)
    device: torch.device
    input_size: int | None = None  # resize the views (None: as stored)
    augment: AugmentConfig = AugmentConfig()
    seg_loss: SegLossConfig = SegLossConfig()
    class_weights: list[float] | None = None  # the classifier's cross-entropy weights
    seed: int = 0

    def __post_init__(self) -> None:
        self.task = get_task(self.task)  # a name given for the task
        self.generator = torch.Generator().manual_seed(self.seed)
        self.use_amp = uses_amp(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self._weights = (
            torch.tensor(self.class_weights, dtype=torch.float32, device=self.device) if self.class_weights else None
        )

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        return to_device(torch.from_numpy(np.ascontiguousarray(a)), self.device)

    def images(self, a: np.ndarray) -> torch.Tensor:
        """uint8 images (N, C, H, W) as float in [0, 1] at the input size, on the device."""
        x = self._to_device(a).float() / 255.0
        size = self.input_size
        if size and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(images as float in [0, 1] at the input size, targets as long)."""
        task = self.task
        x = self.images(batch[task.image_column])
        y = self._to_device(batch[task.target_column]).long()
        size = self.input_size
        if task.dense and size and y.shape[-1] != size:
            y = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
        return x, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.task.loss(logits, y, self._weights, self.seg_loss)

    def train_step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, meter=None
    ) -> tuple[torch.Tensor, int]:
        """Augment, forward, backward, step; returns (summed loss, images), the loss a tensor on the
        device: nothing is read back to the host here (the caller sums and reads once an epoch).
        ``meter`` (the task's fit meter, counting on the device) sees the logits."""
        x, y = self.inputs(batch)
        x, aug_y = augment_batch(x, y if self.task.dense else None, self.augment, self.generator)
        if aug_y is not None:
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
        return loss.detach().float() * len(x), len(x)

    def bag_step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, meter=None, max_slices: int = 16
    ) -> tuple[torch.Tensor, int, int]:
        """The patient objective's step on a batch of bags (``learn.bags``): at most ``max_slices``
        of each bag drawn, augmented, scored; each bag's log-odds pooled by its top quarter and
        compared with its label (class weights per patient). Returns (summed loss, bags, images);
        ``meter`` sees one pooled logit pair per bag."""
        from strokeray.learn.bags import bag_images, sample_bag, top_mean

        bags = [b[sample_bag(len(b), max_slices, self.generator)] for b in bag_images(batch[self.task.image_column])]
        lengths = [len(b) for b in bags]
        y = self._to_device(np.asarray(batch["label"])).long()
        x, _ = augment_batch(self.images(np.concatenate(bags)), None, self.augment, self.generator)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            logits = model(x)
        log_odds = top_mean((logits[:, 1] - logits[:, 0]).float(), lengths)
        weight = self._weights[y] if self._weights is not None else None
        loss = F.binary_cross_entropy_with_logits(log_odds, y.float(), weight=weight)
        if weight is not None:
            loss = loss * len(y) / weight.sum()  # a weighted mean, as cross-entropy's
        if meter is not None:
            meter.update(torch.stack([torch.zeros_like(log_odds), log_odds], 1).detach(), y)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        return loss.detach().float() * len(bags), len(bags), len(x)

    @torch.no_grad()
    def recalibrate_bn(self, model: torch.nn.Module, batches) -> int:
        """Re-estimate every BatchNorm's running statistics with the current weights ("precise BN").

        The running averages lag behind weights that move fast, which on small sets (a few steps
        per epoch) makes eval-mode outputs collapse to one class while training mode is right.
        torch's ``update_bn`` averages un-augmented training batches cumulatively; around it, the
        batches are turned into inputs under autocast, and with none the old statistics are kept
        (``update_bn`` would leave them reset). Returns the images seen.
        """
        norms = [bn_buffers(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return 0
        saved = [tuple(b.clone() for b in buffers) for buffers in norms]
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
            for buffers, old in zip(norms, saved):
                for b, o in zip(buffers, old):
                    b.copy_(o)
        return seen

    @torch.no_grad()
    def eval_step(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(logits, targets, summed loss) of a batch, without augmentation."""
        x, y = self.inputs(batch)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            logits = model(x)
        return logits, y, float(self.loss(logits, y)) * len(x)
