"""Losses: weighted cross-entropy for the classifier; dice + cross-entropy/focal (+ jaccard) for
the segmenter, each term's weight configurable, as in the study (dice + jaccard + focal).

Not segmentation-models-pytorch's losses: its multiclass Dice/Jaccard zero the classes a batch
lacks and then average over all classes (a lesion-sparse batch's lesion term shrinks up to 3x),
and its FocalLoss is one-vs-rest sigmoid, not the softmax focal term on cross-entropy used here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SegLossConfig:
    dice: float = 1.0
    ce: float = 1.0
    focal: float = 0.0
    jaccard: float = 0.0
    focal_gamma: float = 2.0


def soft_overlap(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class soft intersection, prediction area and target area summed over the batch."""
    prob = logits.float().softmax(1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    return (prob * onehot).sum(dims), prob.sum(dims), onehot.sum(dims)


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    cfg: SegLossConfig = SegLossConfig(),
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted sum of the configured terms; dice/jaccard average the classes present."""
    c = logits.shape[1]
    total = logits.new_zeros(())
    if cfg.ce or cfg.focal:
        ce = F.cross_entropy(logits.float(), target.long(), weight=class_weights, reduction="none")
        if cfg.ce:
            total = total + cfg.ce * ce.mean()
        if cfg.focal:
            pt = torch.exp(-F.cross_entropy(logits.float(), target.long(), reduction="none"))
            total = total + cfg.focal * ((1 - pt) ** cfg.focal_gamma * ce).mean()
    if cfg.dice or cfg.jaccard:
        inter, pred, true = soft_overlap(logits, target, c)
        # the mean over the classes present, as weights: indexing by a device mask, or asking
        # whether any class is present, would wait for the GPU every step
        present = (true > 0).float()
        classes = present.sum().clamp(min=1)
        if cfg.dice:
            total = total + cfg.dice * ((1 - (2 * inter + 1) / (pred + true + 1)) * present).sum() / classes
        if cfg.jaccard:
            total = total + cfg.jaccard * ((1 - (inter + 1) / (pred + true - inter + 1)) * present).sum() / classes
    return total
