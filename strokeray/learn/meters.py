"""The meters on the host: numpy accumulators of a pass's outputs with one protocol,
``update(outputs, targets, batch)``, ``merge`` (one meter per training worker), ``report(prefix)``.
Plain picklable objects, so Ray Train can gather them across workers; ``learn.fit_meters``' device
counters become one of these with ``host()`` once an epoch.
"""

from __future__ import annotations

import numpy as np

from strokeray.learn.metrics import SegmentationMeter, binary_report, operating_threshold, patient_level


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
