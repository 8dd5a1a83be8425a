"""The training pass's fit meters, counted on the model's device: no host read-back per step.

A GPU idles while the host waits for a ``.cpu()``; these meters keep their counts in device
tensors and hand a numpy meter (``host()``: ``learn.meters.AccuracyMeter`` / ``LesionMeter``,
which merge across workers and report) once an epoch ends. The counts equal the numpy meters'
(tested): accuracy at P(stroke) >= 0.5, per-class intersections and unions, and the competition
IoU with a 3x3 dilation and erosion done as max pooling (OpenCV's borders: nothing outside the
image dilates in or erodes away).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from strokeray.learn.meters import AccuracyMeter, LesionMeter


class DeviceAccuracy:
    """Slice accuracy at P(stroke) >= 0.5 from the classifier's logits."""

    def __init__(self) -> None:
        self.correct: torch.Tensor | None = None
        self.seen = 0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        # softmax(l)[1] >= 0.5 exactly when l[1] >= l[0]
        hits = ((logits[:, 1] >= logits[:, 0]) == (y == 1)).sum()
        self.correct = hits if self.correct is None else self.correct + hits
        self.seen += len(y)

    def host(self):
        meter = AccuracyMeter()
        meter.correct = int(self.correct) if self.correct is not None else 0
        meter.seen = self.seen
        return meter


def _dilate(t: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(t, 3, stride=1, padding=1)


def _erode(t: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-t, 3, stride=1, padding=1)


class DeviceLesionCounts:
    """Per-class pixel counts and the competition IoU's sums from the segmenter's logits."""

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.names = class_names
        self.counts: torch.Tensor | None = None  # rows inter, union, pred, true per class; then comp sums

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        pred = logits.argmax(1)
        k = len(self.names)
        rows = []
        for c in range(k):
            p, t = pred == c, y == c
            rows.append(torch.stack([(p & t).sum(), (p | t).sum(), p.sum(), t.sum()]))
        comp = torch.zeros(2, dtype=torch.long, device=pred.device)
        for c in range(1, k):  # lesion classes, scored jointly
            p = pred == c
            t = (y == c).float()[:, None]
            dilated = _dilate(t)[:, 0] > 0
            eroded = _erode(t)[:, 0] > 0
            comp = comp + torch.stack([(p & dilated).sum(), (p | eroded).sum()])
        batch = torch.cat([torch.stack(rows).flatten(), comp])
        self.counts = batch if self.counts is None else self.counts + batch

    def host(self):
        meter = LesionMeter(self.names, fit=True)
        if self.counts is None:
            return meter
        values = self.counts.cpu().numpy()
        k = len(self.names)
        per_class = values[: 4 * k].reshape(k, 4)
        meter.inter[:], meter.union[:], meter.pred_area[:], meter.true_area[:] = per_class.T
        meter.comp_inter, meter.comp_union = int(values[4 * k]), int(values[4 * k + 1])
        return meter
