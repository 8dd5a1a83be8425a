"""Can each task's model fit real CT at all? A few dozen real slices through strokeray's own decode,
preprocessing, model and training step, no augmentation: the training loss must fall close to zero.
A model, loss or input path that cannot learn fails here in minutes, before a cross-validation
spends hours on it. (With the train command's default lr of 1e-4 the classifier's loss was still
0.75 after 60 steps: measured when this test was written.)"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from strokeray.imaging.overlay import HEMORRHAGIC
from strokeray.imaging.views import preprocess
from strokeray.io.decode import decode_slices
from strokeray.io.dicom_decode import decode_dicom, decode_dicom_mask
from strokeray.learn.augment import AugmentConfig
from strokeray.learn.models import ModelConfig, build_model
from strokeray.learn.steps import TaskSteps
from strokeray.learn.tasks import CLASSIFY, SEGMENT

from ..conftest import shared_data

pytestmark = pytest.mark.realdata


def fit(task, batch: dict, model_cfg: ModelConfig, size: int, passes: int, batch_size: int, lr: float) -> list[float]:
    """Mean training loss of each pass over ``batch`` (fixed order, no augmentation)."""
    torch.manual_seed(0)
    model = build_model(model_cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = TaskSteps(task, torch.device("cpu"), input_size=size, augment=AugmentConfig(strength=0))
    n = len(batch[task.image_column])
    losses = []
    for _ in range(passes):
        total = sum(
            float(steps.train_step(model, optimizer, {k: v[i : i + batch_size] for k, v in batch.items()})[0])
            for i in range(0, n, batch_size)
        )
        losses.append(total / n)
    return losses


def test_the_classifier_fits_32_real_ct_ich_slices():
    """16 Normal and 16 Stroke slices of 32 different CT-ICH patients (mid-brain slices, none of the
    Normal patients CT-ICH marks as bleeding), the study head with its dropout, at 96 px."""
    root = shared_data("ctich-kaggle-strokect")
    with (root / "labels.csv").open() as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if r["folder_label_conflicts_ctich"] == "no" and 12 <= int(r["file_slice_index"]) <= 24
        ]
    first: dict[tuple[int, str], dict] = {}
    for r in rows:
        first.setdefault((int(r["stroke_label_as_published"]), r["ctich_patient_id"]), r)
    chosen = [r for label in (0, 1) for r in [v for k, v in sorted(first.items()) if k[0] == label][:16]]
    images, labels = [], []
    for r in chosen:
        (ct,) = decode_slices((root / r["path"]).read_bytes(), r["path"])
        images.append(preprocess(ct.hu, None, None, export_window=ct.export_window).classification.image)
        labels.append(int(r["stroke_label_as_published"]))
    assert np.bincount(labels).tolist() == [16, 16] and len({r["ctich_patient_id"] for r in chosen}) == 32
    batch = {CLASSIFY.image_column: np.stack(images), CLASSIFY.target_column: np.asarray(labels)}
    losses = fit(CLASSIFY, batch, ModelConfig(backbone="resnet18"), size=96, passes=60, batch_size=16, lr=1e-3)
    assert losses[0] > 0.6  # it starts at chance (ln 2) ...
    assert min(losses[-5:]) < 0.2, [round(x, 3) for x in losses]  # ... and fits


def test_the_segmenter_fits_24_real_bleed_masks():
    """24 CT-ICH slices with their hemorrhage masks (DICOM, HU), U-Net(resnet18) at 128 px."""
    root = shared_data("ctich-dicom-masks-26")
    with (root / "slice_labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:24]
    images, masks = [], []
    for r in rows:
        ct = decode_dicom((root / r["image"]).read_bytes(), r["image"])[0]
        mask = decode_dicom_mask((root / r["mask"]).read_bytes(), r["mask"])
        view = preprocess(ct.hu, ct.spacing_mm, mask.astype(np.uint8) * HEMORRHAGIC).segmentation
        images.append(view.image)
        masks.append(view.mask)
    batch = {SEGMENT.image_column: np.stack(images), SEGMENT.target_column: np.stack(masks)}
    assert (batch[SEGMENT.target_column] == HEMORRHAGIC).any(axis=(1, 2)).all()
    model = ModelConfig(task=SEGMENT.name, backbone="resnet18", num_classes=SEGMENT.num_classes)
    losses = fit(SEGMENT, batch, model, size=128, passes=25, batch_size=8, lr=1e-3)
    assert losses[0] > 0.5
    assert min(losses[-5:]) < 0.2, [round(x, 3) for x in losses]
