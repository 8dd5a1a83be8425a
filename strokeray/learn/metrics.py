"""Classification and segmentation metrics on numpy arrays (slice and patient level).

Includes the competition IoU the study reported (71.04 %): intersection against the ground
truth dilated by a 3x3 kernel, union against the ground truth eroded by it, lesion classes scored
jointly, summed over the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from strokeray.checks import check_choice
from strokeray.imaging.overlay import CLASS_NAMES


@dataclass(frozen=True)
class BinaryReport:
    n: int
    accuracy: float
    sensitivity: float  # recall of the positive class
    specificity: float
    precision: float
    f1: float
    auc: float  # NaN when only one class is present
    tp: int
    fp: int
    tn: int
    fn: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items()}


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def _tie_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s`` with ties given their average rank (scipy's ``rankdata``, in numpy)."""
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the highest rank of each distinct value
    return (last - (counts - 1) / 2.0)[inverse]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); NaN with one class only."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _tie_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending; O(n log n)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    thresholds, inverse = np.unique(s, return_inverse=True)
    # Positives and negatives at each distinct score, then "score >= t" counts from the top down.
    pos = np.bincount(inverse, weights=y, minlength=len(thresholds))[::-1].cumsum()
    neg = np.bincount(inverse, weights=~y, minlength=len(thresholds))[::-1].cumsum()
    tpr = pos / y.sum() if y.any() else np.zeros_like(pos)
    fpr = neg / (~y).sum() if (~y).any() else np.zeros_like(neg)
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thresholds[::-1]]


def operating_threshold(labels: np.ndarray, scores: np.ndarray, default: float = 0.5) -> float:
    """The probability threshold with the highest Youden J (sensitivity + specificity - 1).

    Among the thresholds reaching it, the middle of the widest gap between neighbouring scores is
    taken, so a perfectly separated set gets a cut between its classes rather than on a score.
    ``default`` when the labels hold one class only.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        return default
    fpr, tpr, thr = roc_curve(y, s)
    j = tpr[1:] - fpr[1:]
    values = thr[1:]  # descending distinct scores; "positive if >= value"
    below = np.r_[values[1:], min(0.0, values[-1])]  # the next lower score (or 0)
    best = np.flatnonzero(j >= j.max() - 1e-12)
    k = best[np.argmax(values[best] - below[best])]
    return float((values[k] + below[k]) / 2.0)


def binary_report(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> BinaryReport:
    """Slice-level metrics of positive-class probabilities against 0/1 labels."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    tn = int((~pred & ~y).sum())
    fn = int((~pred & y).sum())
    sens, prec = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    return BinaryReport(
        n=len(y),
        accuracy=_ratio(tp + tn, len(y)),
        sensitivity=sens,
        specificity=_ratio(tn, tn + fp),
        precision=prec,
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        auc=roc_auc(y, scores),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


PATIENT_POOLS = ("max", "mean", "top")
TOP_SHARE = 0.25  # the "top" pool: the mean of a patient's top quarter of slices (learn.bags.TOP_SHARE)


def patient_level(
    patients: np.ndarray, labels: np.ndarray, scores: np.ndarray, pool: str = "max"
) -> tuple[np.ndarray, np.ndarray]:
    """Per patient: label = any positive slice, score = the highest slice score (``pool="max"``),
    their mean (``"mean"``: for labels given per patient, most of whose slices show nothing) or the
    mean of the top quarter of them (``"top"``, at least one: what the patient objective trains)."""
    check_choice("patient pool", pool, PATIENT_POOLS)
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((-s, np.asarray(patients)))  # by patient, then score from the highest
    p = np.asarray(patients)[order]
    y = np.asarray(labels)[order]
    s = s[order]
    starts = np.r_[0, np.flatnonzero(p[1:] != p[:-1]) + 1]
    plab = np.maximum.reduceat(y, starts)
    lengths = np.diff(np.r_[starts, len(s)])
    if pool == "mean":
        return plab, np.add.reduceat(s, starts) / lengths
    if pool == "top":
        k = np.maximum(1, np.ceil(TOP_SHARE * lengths)).astype(np.int64)
        rank = np.arange(len(s)) - np.repeat(starts, lengths)
        return plab, np.add.reduceat(np.where(rank < np.repeat(k, lengths), s, 0.0), starts) / k
    return plab, s[starts]


class SegmentationMeter:
    """Accumulates per-class intersection/union/areas and the competition IoU over many masks."""

    def __init__(self, num_classes: int = 3) -> None:
        self.num_classes = num_classes
        self.inter = np.zeros(num_classes, np.int64)
        self.union = np.zeros(num_classes, np.int64)
        self.pred_area = np.zeros(num_classes, np.int64)
        self.true_area = np.zeros(num_classes, np.int64)
        self.comp_inter = 0
        self.comp_union = 0
        self._kernel = np.ones((3, 3), np.uint8)

    def update(self, pred: np.ndarray, true: np.ndarray) -> None:
        """Add a batch: integer class maps of equal shape, (H, W) or (N, H, W)."""
        pred = np.asarray(pred)
        true = np.asarray(true)
        if pred.shape != true.shape:
            raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ")
        if pred.ndim == 2:
            pred, true = pred[None], true[None]
        for c in range(self.num_classes):
            p, t = pred == c, true == c
            self.inter[c] += int(np.count_nonzero(p & t))
            self.union[c] += int(np.count_nonzero(p | t))
            self.pred_area[c] += int(np.count_nonzero(p))
            self.true_area[c] += int(np.count_nonzero(t))
        for pm, tm in zip(pred, true):
            for c in range(1, self.num_classes):  # lesion classes, scored jointly
                p = pm == c
                t = (tm == c).astype(np.uint8)
                if not p.any() and not t.any():
                    continue
                dilated = cv2.dilate(t, self._kernel).astype(bool)
                eroded = cv2.erode(t, self._kernel).astype(bool)
                self.comp_inter += int(np.count_nonzero(p & dilated))
                self.comp_union += int(np.count_nonzero(p | eroded))

    def merge(self, other: SegmentationMeter) -> None:
        """Add another meter's counts (e.g. one per training worker)."""
        for attr in ("inter", "union", "pred_area", "true_area"):
            getattr(self, attr)[:] += getattr(other, attr)
        self.comp_inter += other.comp_inter
        self.comp_union += other.comp_union

    def iou(self) -> np.ndarray:
        return np.where(self.union > 0, self.inter / np.maximum(self.union, 1), np.nan)

    def dice(self) -> np.ndarray:
        denom = self.pred_area + self.true_area
        return np.where(denom > 0, 2 * self.inter / np.maximum(denom, 1), np.nan)

    def competition_iou(self) -> float:
        return _ratio(self.comp_inter, self.comp_union)

    def report(self, names: tuple[str, ...] = CLASS_NAMES) -> dict[str, float]:
        iou, dice = self.iou(), self.dice()
        out = {f"iou_{n}": float(v) for n, v in zip(names, iou)}
        out.update({f"dice_{n}": float(v) for n, v in zip(names, dice)})
        lesion = iou[1:][~np.isnan(iou[1:])]
        out["mean_lesion_iou"] = float(lesion.mean()) if lesion.size else float("nan")
        out["competition_iou"] = self.competition_iou()
        return out


def pooled_binary(
    prob: np.ndarray, labels: np.ndarray, patients: np.ndarray, threshold: np.ndarray, pool: str = "max"
) -> dict[str, float]:
    """Slice and patient AUC, sensitivity, specificity and accuracy of pooled out-of-fold
    predictions; ``threshold`` is each slice's own fold's operating point. A patient is scored by
    ``pool`` of its slices and called positive when that pool of (probability - threshold) is >= 0:
    by max, when any slice is called; by mean, when its mean probability reaches the threshold."""
    prob, labels = np.asarray(prob, np.float64), np.asarray(labels)
    margin = prob - np.asarray(threshold, np.float64)
    plab, pprob = patient_level(patients, labels, prob, pool)
    _, pmargin = patient_level(patients, labels, margin, pool)
    out = {"slice_auc": roc_auc(labels, prob), "patient_auc": roc_auc(plab, pprob)}
    for level, y, calls in (("slice", labels, margin >= 0), ("patient", plab, pmargin >= 0)):
        r = binary_report(y, calls.astype(np.float64), 0.5)
        out.update(
            {
                f"{level}_sensitivity": r.sensitivity,
                f"{level}_specificity": r.specificity,
                f"{level}_accuracy": r.accuracy,
            }
        )
    return out


def pooled_overlap(
    inter: dict[str, np.ndarray], true: dict[str, np.ndarray], pred: dict[str, np.ndarray]
) -> dict[str, float]:
    """Per lesion class IoU and Dice of pooled pixel counts (each dict: class name -> per-slice
    counts), and their mean lesion IoU: the same numbers a SegmentationMeter gives over all slices."""
    out: dict[str, float] = {}
    for name in inter:
        i, t, p = (float(np.sum(d[name])) for d in (inter, true, pred))
        out[f"iou_{name}"] = i / (t + p - i) if t + p - i > 0 else float("nan")
        out[f"dice_{name}"] = 2 * i / (t + p) if t + p > 0 else float("nan")
    ious = [v for k, v in out.items() if k.startswith("iou_") and v == v]
    out["mean_lesion_iou"] = float(np.mean(ious)) if ious else float("nan")
    return out


def patient_bootstrap_draws(
    patients: np.ndarray, statistic, rounds: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """``statistic(index, groups) -> dict`` over ``rounds`` resamples of whole patients with
    replacement (a patient's slices are not independent, so the patient is the unit); ``groups``
    numbers the drawn patients, so a patient drawn twice counts as two. One array per key."""
    _, inverse = np.unique(np.asarray(patients), return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        pick = rng.integers(0, len(members), len(members))
        index = np.concatenate([members[i] for i in pick])
        groups = np.repeat(np.arange(len(pick)), [len(members[i]) for i in pick])
        for k, v in statistic(index, groups).items():
            draws.setdefault(k, []).append(v)
    return {k: np.asarray(v, np.float64) for k, v in draws.items()}


def percentile_intervals(draws: dict[str, np.ndarray], level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Central ``level`` percentile interval of each key's draws (NaN draws left out)."""
    tail = (1.0 - level) / 2.0
    return {k: (float(np.nanquantile(v, tail)), float(np.nanquantile(v, 1.0 - tail))) for k, v in draws.items()}


def patient_bootstrap(
    patients: np.ndarray, statistic, rounds: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``statistic`` over patient resamples (``patient_bootstrap_draws``)."""
    return percentile_intervals(patient_bootstrap_draws(patients, statistic, rounds, seed), level)


def overlap_summary(
    columns,
    names: tuple[str, ...],
    rounds: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """(pooled IoU/Dice per lesion class and their mean, 95 % patient-bootstrap intervals) from
    per-slice prediction columns: ``patient`` and ``inter_/true_/pred_<class>_pixels``."""
    counts = {
        kind: {n: np.asarray(columns[f"{kind}_{n}_pixels"], np.float64) for n in names}
        for kind in ("inter", "true", "pred")
    }
    pooled = pooled_overlap(counts["inter"], counts["true"], counts["pred"])
    intervals = patient_bootstrap(
        np.asarray(columns["patient"]),
        lambda i, _: pooled_overlap(
            *({n: c[n][i] for n in names} for c in (counts["inter"], counts["true"], counts["pred"]))
        ),
        rounds,
        seed,
    )
    return pooled, intervals
