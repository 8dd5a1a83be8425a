"""Patient bags for the patient-level (multiple-instance) objective.

Where labels are given per patient (CT-ICH: a patient with a bleed, most of whose slices show
none), a slice-level loss teaches the model that clean slices are positive. The patient objective
judges a patient instead: its slices' log-odds are pooled by the mean of its most suspicious
quarter (``top_mean``; the patient pool ``top`` of ``learn.metrics`` is the same on probabilities)
and the pool is compared with the patient's label. A bag is one row holding a patient's slices,
made by ``make_bag`` from the slices Ray Data groups by patient.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from strokeray.learn.metrics import TOP_SHARE  # the share of a patient's slices, the most suspicious, that decide it


def top_count(n: int) -> int:
    """How many of ``n`` slices the top pool averages (at least one)."""
    return max(1, math.ceil(TOP_SHARE * n))


def top_mean(scores: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Per bag (consecutive runs of ``lengths`` in ``scores``), the mean of its top quarter."""
    return torch.stack([part.topk(top_count(len(part))).values.mean() for part in torch.split(scores, lengths)])


def make_bag(group: dict[str, np.ndarray], image_column: str) -> dict[str, np.ndarray]:
    """One patient's slices (a Ray Data group, numpy) as one row: the stacked images and the patient's
    label (its highest: any positive slice makes a positive patient)."""
    images = group[image_column]
    return {
        image_column: images[None],
        "label": np.asarray([group["label"].max()], np.int64),
        "patient": np.asarray([group["patient"][0]]),
    }


def bag_images(column: np.ndarray) -> list[np.ndarray]:
    """The bags of a batch's image column, each (n, C, H, W): Ray gives an object array of them
    when the batch's bags differ in size, one (B, n, C, H, W) array when they do not."""
    return list(column)


def sample_bag(n: int, limit: int, generator: torch.Generator) -> np.ndarray:
    """Indices of at most ``limit`` of a bag's ``n`` slices, drawn anew at every step (in order)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(torch.randperm(n, generator=generator)[:limit].numpy())


def flatten_bags(batch: dict, image_column: str) -> dict[str, np.ndarray]:
    """A batch of bags as a batch of slices (each slice carrying its patient's label)."""
    bags = bag_images(batch[image_column])
    lengths = [len(b) for b in bags]
    return {
        image_column: np.concatenate(bags),
        "label": np.repeat(np.asarray(batch["label"]), lengths),
        "patient": np.repeat(np.asarray(batch["patient"]), lengths),
    }
