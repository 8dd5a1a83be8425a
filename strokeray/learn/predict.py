"""Run a model bundle on shard-format views: the classifier's stroke probability, the
segmenter's lesion classes at the segmentation view's resolution. Used by scoring and evaluation."""

from __future__ import annotations

import hashlib

import fsspec
import numpy as np
import torch
import torch.nn.functional as F

from strokeray.learn.accel import for_device, uses_amp
from strokeray.learn.bundle import load_bundle
from strokeray.learn.tasks import CLASSIFY, SEGMENT, Task, get_task


def bundle_version(path: str) -> str:
    """A short content hash of a bundle's weights: the model version written beside predictions."""
    h = hashlib.sha256()
    with fsspec.open(f"{str(path).rstrip('/')}/model.safetensors", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


class BundlePredictor:
    """One loaded bundle on one device; inputs are uint8 views (N, C, H, W) as the shards hold them."""

    def __init__(self, path: str, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        model, self.doc = load_bundle(path)
        self.model = for_device(model, self.device).eval()
        self.task = get_task(self.doc["task"])
        self.size = int(self.doc["input_size"])
        self.version = bundle_version(path)
        self.use_amp = uses_amp(self.device)
        # a classifier's operating point, chosen on its validation split (0.5 for older bundles)
        self.threshold = float(self.doc.get("threshold", 0.5))

    def _logits(self, views: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(views))
        if self.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).float() / 255.0
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.use_amp):
            return self.model(x).float()

    def predict(self, views: np.ndarray) -> np.ndarray:
        """The task's outputs for uint8 views: P(stroke) per slice (float32), or a class per pixel
        (uint8, at the views' size)."""
        out = self.task.outputs(self._logits(views))
        if not self.task.dense:
            return out.astype(np.float32)
        pred = torch.from_numpy(out)
        if pred.shape[-1] != views.shape[-1]:
            pred = F.interpolate(pred[:, None].float(), size=views.shape[-2:], mode="nearest")[:, 0]
        return pred.to(torch.uint8).numpy()

    def _expect(self, task: Task) -> None:
        if self.task is not task:
            raise ValueError(f"this bundle is a {self.task.name} model, not a {task.title.lower()}")

    def stroke_probability(self, cls_views: np.ndarray) -> np.ndarray:
        """P(stroke) per slice, float32 (N,)."""
        self._expect(CLASSIFY)
        return self.predict(cls_views)

    def lesion_classes(self, seg_views: np.ndarray) -> np.ndarray:
        """Class per pixel (0 background, 1 ischemic, 2 hemorrhagic), uint8 (N, H, W) at the views' size."""
        self._expect(SEGMENT)
        return self.predict(seg_views)
