"""The original study's per-file preprocessing, re-implemented faithfully as a speed baseline.

Per DICOM file: pydicom read, HU from RescaleSlope/Intercept, brain window, a brain mask from a
threshold, skimage dilation and scipy labelling (largest component, holes filled), skull and
noise removed, matplotlib ``imsave`` to a PNG on disk, OpenCV re-reads it and crops it to the
largest contour, then resizes to the model size. Benchmark-only: matplotlib and scikit-image are
test extras, imported here and nowhere else.
"""

from __future__ import annotations

import os
import tempfile

import cv2
import numpy as np
import pydicom
from scipy import ndimage


def study_preprocess(path: str, workdir: str, size: int = 224) -> np.ndarray:
    """One file through the study's pipeline; returns the cropped, resized uint8 image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage import morphology

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    level, width = 40.0, 80.0
    windowed = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0)
    mask = windowed > 0.0
    mask = morphology.dilation(mask, morphology.disk(2))
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    mask = ndimage.binary_fill_holes(mask)
    brain = np.where(mask & (hu < 100), windowed, 0.0)
    png = os.path.join(workdir, os.path.basename(path) + ".png")
    plt.imsave(png, brain, cmap="gray")
    img = cv2.imread(png)
    if img is None:
        raise OSError(f"OpenCV cannot read {png}")
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    _, thresh = cv2.threshold(grey, 1, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(thresh, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if contours:
        x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
        grey = grey[y : y + h, x : x + w]
    return cv2.resize(grey, (size, size))


def run_study_baseline(paths: list[str]) -> int:
    """Process every file; returns how many were processed."""
    with tempfile.TemporaryDirectory() as workdir:
        for p in paths:
            study_preprocess(p, workdir)
    return len(paths)


def study_score(
    paths: list[str],
    classifier,
    segmenter,
    threshold: float,
    cls_size: int,
    seg_size: int,
    segment: list[bool] | None = None,
) -> int:
    """The study's scoring loop: per file its preprocessing (PNG round trip, resize), then one
    ``model(x)`` call per image, and the segmenter on the image when the classifier says stroke
    (or, given ``segment``, on exactly those files: the same work as a cascade it is compared
    with). The models are torch modules taking 3-channel float input in [0, 1]; returns the
    number segmented."""
    import torch

    positives = 0
    with tempfile.TemporaryDirectory() as workdir, torch.inference_mode():
        for i, p in enumerate(paths):
            grey = study_preprocess(p, workdir, size=cls_size)
            x = torch.from_numpy(np.repeat(grey[None, None], 3, 1)).float() / 255.0
            prob = classifier(x).softmax(1)[0, 1].item()
            if (prob >= threshold) if segment is None else segment[i]:
                positives += 1
                s = (
                    torch.from_numpy(np.repeat(cv2.resize(grey, (seg_size, seg_size))[None, None], 3, 1)).float()
                    / 255.0
                )
                segmenter(s).argmax(1)
    return positives
