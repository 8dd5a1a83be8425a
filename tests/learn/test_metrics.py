import math

import numpy as np
import pytest

from strokeray.learn.metrics import (
    SegmentationMeter,
    binary_report,
    patient_bootstrap,
    patient_level,
    pooled_binary,
    pooled_overlap,
    roc_auc,
    roc_curve,
)


def test_binary_report_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4, 0.7])
    r = binary_report(labels, scores)
    assert (r.tp, r.fn, r.fp, r.tn) == (3, 1, 1, 3)
    assert r.accuracy == 0.75 and r.sensitivity == 0.75 and r.specificity == 0.75
    assert r.precision == 0.75 and r.f1 == pytest.approx(0.75)
    # 16 positive/negative pairs; positives outrank negatives in 14 of them (0.3 < 0.6 and 0.3 < 0.4).
    assert r.auc == pytest.approx(14 / 16)


def test_auc_ties_and_degenerate():
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2]) == 1.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))
    fpr, tpr, _ = roc_curve([0, 1, 1, 0], [0.1, 0.9, 0.6, 0.7])
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0 and np.all(np.diff(fpr) >= 0)


def test_auc_equals_the_area_under_the_curve_and_pair_counting_with_many_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    s = rng.integers(0, 9, 400) / 8.0  # nine distinct scores: ties everywhere
    fpr, tpr, thr = roc_curve(y, s)
    assert len(thr) == 10 and np.all(np.diff(thr[1:]) < 0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and fpr[-1] == tpr[-1] == 1.0
    pairs = s[y == 1][:, None] - s[y == 0][None, :]
    by_pairs = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    assert roc_auc(y, s) == pytest.approx(by_pairs) == pytest.approx(np.trapezoid(tpr, fpr))


def test_patient_level_takes_any_positive_and_max_score():
    pats = np.array(["b", "a", "b", "a", "c"])
    lab, score = patient_level(pats, np.array([0, 0, 1, 0, 0]), np.array([0.2, 0.1, 0.7, 0.3, 0.5]))
    assert lab.tolist() == [0, 1, 0] and score.tolist() == [0.3, 0.7, 0.5]
    _, mean = patient_level(pats, np.array([0, 0, 1, 0, 0]), np.array([0.2, 0.1, 0.7, 0.3, 0.5]), pool="mean")
    assert mean == pytest.approx([0.2, 0.45, 0.5])
    with pytest.raises(ValueError, match="patient pool"):
        patient_level(pats, np.zeros(5), np.zeros(5), pool="median")


def test_segmentation_iou_dice_by_hand():
    true = np.zeros((6, 6), int)
    true[1:3, 1:3] = 2  # 4 px
    pred = np.zeros((6, 6), int)
    pred[1:3, 1:4] = 2  # 6 px, 4 overlap
    m = SegmentationMeter(3)
    m.update(pred, true)
    rep = m.report()
    assert rep["iou_hemorrhagic"] == pytest.approx(4 / 6)
    assert rep["dice_hemorrhagic"] == pytest.approx(8 / 10)
    assert math.isnan(rep["iou_ischemic"])
    assert rep["mean_lesion_iou"] == pytest.approx(4 / 6)


def test_competition_iou_is_lenient_at_borders():
    true = np.zeros((9, 9), int)
    true[2:7, 2:7] = 1  # 25 px; eroded 3x3 core is 9 px, dilated square is 49 px
    pred = np.zeros((9, 9), int)
    pred[1:8, 1:8] = 1  # 49 px: one pixel too generous all around
    m = SegmentationMeter(3)
    m.update(pred, true)
    # Intersection with the dilated truth: 49; union with the eroded truth: 49 -> a perfect score,
    # where the plain IoU is 25/49.
    assert m.competition_iou() == 1.0
    assert m.report()["iou_ischemic"] == pytest.approx(25 / 49)
    with pytest.raises(ValueError):
        m.update(pred, true[:-1])


def test_operating_threshold_maximises_youden_j_between_scores():
    from strokeray.learn.metrics import operating_threshold

    # separable: the cut falls midway between the classes, wherever 0.5 is
    assert operating_threshold([0, 0, 1, 1], [0.01, 0.02, 0.10, 0.30]) == pytest.approx(0.06)
    t = operating_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    y, s = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    best_j = max(((s[y == 1] >= c).mean() - (s[y == 0] >= c).mean()) for c in s)
    assert (s[y == 1] >= t).mean() - (s[y == 0] >= t).mean() == pytest.approx(best_j)
    assert operating_threshold([1, 1], [0.2, 0.3]) == 0.5  # one class: the default


def test_pooled_binary_calls_patients_by_any_slice_at_its_own_threshold():
    prob = np.array([0.9, 0.1, 0.4, 0.3, 0.2, 0.45])
    lab = np.array([1, 1, 1, 1, 0, 0])
    pat = np.array(["a", "a", "b", "b", "c", "c"])
    threshold = np.array([0.7, 0.7, 0.3, 0.3, 0.7, 0.7])  # b's fold had a low threshold
    m = pooled_binary(prob, lab, pat, threshold)
    assert m["slice_sensitivity"] == 0.75 and m["slice_specificity"] == 1.0
    assert m["patient_sensitivity"] == 1.0 and m["patient_specificity"] == 1.0
    assert m["patient_auc"] == 0.5  # by the highest slice: a 0.9 above c 0.45, b 0.4 below it
    assert m["slice_auc"] == pytest.approx(roc_auc(lab, prob))


def test_pooled_binary_by_mean_scores_and_calls_patients_by_their_mean():
    prob = np.array([0.9, 0.1, 0.4, 0.3, 0.2, 0.45])
    lab = np.array([1, 1, 1, 1, 0, 0])
    pat = np.array(["a", "a", "b", "b", "c", "c"])
    threshold = np.array([0.7, 0.7, 0.3, 0.3, 0.7, 0.7])
    m = pooled_binary(prob, lab, pat, threshold, pool="mean")
    assert m["patient_auc"] == 1.0  # means a 0.5, b 0.35 both above c 0.325
    # a's mean 0.5 is under its fold's 0.7; b's 0.35 reaches its 0.3; c's 0.325 is under 0.7
    assert m["patient_sensitivity"] == 0.5 and m["patient_specificity"] == 1.0
    assert m["slice_sensitivity"] == 0.75  # slices are called the same way whatever the pool


def test_patient_bootstrap_resamples_whole_patients():
    rng = np.random.default_rng(0)
    pat = np.repeat(np.arange(40), 5)
    lab = np.repeat(np.arange(40) % 2, 5)
    prob = np.clip(lab * 0.3 + rng.random(200) * 0.7, 0, 1)
    point = roc_auc(lab, prob)
    seen = []

    def stat(i, g):
        seen.append((len(np.unique(g)), len(i)))
        return {"auc": roc_auc(lab[i], prob[i])}

    iv = patient_bootstrap(pat, stat, rounds=300, seed=1)["auc"]
    assert iv[0] < point < iv[1] and iv[1] - iv[0] < 0.3
    # 40 patients drawn each round, a patient drawn twice counted twice, all 5 slices of each
    assert all(n == 40 and m == 200 for n, m in seen)
    # more patients with the same signal: a narrower interval
    pat2, lab2 = np.repeat(np.arange(400), 5), np.repeat(np.arange(400) % 2, 5)
    prob2 = np.clip(lab2 * 0.3 + rng.random(2000) * 0.7, 0, 1)
    iv2 = patient_bootstrap(pat2, lambda i, g: {"auc": roc_auc(lab2[i], prob2[i])}, rounds=300)["auc"]
    assert iv2[1] - iv2[0] < 0.6 * (iv[1] - iv[0])


def test_pooled_overlap_equals_the_meter_over_the_same_slices(rng):
    """Summing per-slice counts gives the split-level IoU and Dice the evaluation meter gives."""
    truth = rng.integers(0, 3, (5, 16, 16)) * (rng.random((5, 16, 16)) < 0.3)
    pred = np.where(rng.random((5, 16, 16)) < 0.7, truth, rng.integers(0, 3, (5, 16, 16)))
    m = SegmentationMeter(3)
    m.update(pred, truth)
    names = {1: "ischemic", 2: "hemorrhagic"}

    def per_slice(mask):
        return mask.reshape(len(mask), -1).sum(1)

    pooled = pooled_overlap(
        {n: per_slice((truth == c) & (pred == c)) for c, n in names.items()},
        {n: per_slice(truth == c) for c, n in names.items()},
        {n: per_slice(pred == c) for c, n in names.items()},
    )
    rep = m.report()
    for key in ("iou_ischemic", "iou_hemorrhagic", "dice_ischemic", "dice_hemorrhagic", "mean_lesion_iou"):
        assert pooled[key] == pytest.approx(rep[key])
    empty = pooled_overlap({"ischemic": np.zeros(2)}, {"ischemic": np.zeros(2)}, {"ischemic": np.zeros(2)})
    assert math.isnan(empty["iou_ischemic"]) and math.isnan(empty["mean_lesion_iou"])
