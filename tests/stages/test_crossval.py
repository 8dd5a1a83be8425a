"""Cross-validation on phantom shards: every patient tested once, pooled metrics with patient
intervals, resume and refusal; and how many folds a cluster runs at once."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from strokeray.learn.augment import AugmentConfig
from strokeray.learn.models import ModelConfig
from strokeray.report.page import cell
from strokeray.stages.crossval import CrossvalConfig, parallel_folds, run_crossval
from strokeray.stages.report import crossval_section
from strokeray.stages.run_layout import RunLayout
from strokeray.stages.stage_dir import OutputError
from strokeray.stages.train import TrainConfig

from ..conftest import phantom_shards


def quick(task: str, **kw) -> CrossvalConfig:
    train = TrainConfig(
        task=task,
        model=ModelConfig(backbone="resnet18", head="linear", dropout=0.0),
        epochs=1,
        batch_size=8,
        input_size=64,
        lr=1e-3,
        num_workers=1,
        augment=AugmentConfig(strength=0.0),
        bn_recalibration_batches=2,
    )
    return CrossvalConfig(train=train, folds=2, val_share=0.25, bootstrap=200, **kw)


def test_parallel_folds_fit_the_cluster():
    cfg = quick("classify")
    assert parallel_folds(cfg, {"CPU": 2}) == (1, None)  # train's own CPU sharing
    assert parallel_folds(CrossvalConfig(train=cfg.train, folds=5), {"CPU": 16}) == (5, 1.0)
    assert parallel_folds(CrossvalConfig(train=cfg.train, folds=5, parallel=2), {"CPU": 16}) == (2, 1.0)
    gpu = CrossvalConfig(train=TrainConfig(num_workers=2, use_gpu=True), folds=5)
    assert parallel_folds(gpu, {"CPU": 32, "GPU": 4}) == (2, None)


@pytest.fixture(scope="module")
def shards(ray_local, tmp_path_factory) -> str:
    return phantom_shards(tmp_path_factory.mktemp("crossval"), seed=11)


@pytest.mark.ray
def test_classifier_crossval_tests_every_patient_once_and_pools_with_intervals(shards, tmp_path):
    out = str(tmp_path / "run" / "crossval")  # where the report looks
    r = run_crossval(shards, out, quick("classify"), name="cv", log=lambda *_: None)
    assert not r.reused and [f["fold"] for f in r.folds] == [1, 2]
    assert sum(f["test_patients"] for f in r.folds) == 16 and all(f["val_patients"] == 2 for f in r.folds)
    pred = pq.read_table(f"{r.path}/predictions.parquet")
    patients = pred["patient"].to_pylist()
    folds_of = {p: {f for q, f in zip(patients, pred["fold"].to_pylist()) if q == p} for p in set(patients)}
    assert len(folds_of) == 16 and all(len(f) == 1 for f in folds_of.values())  # one fold tests a patient
    assert len(set(pred["id"].to_pylist())) == pred.num_rows
    for k in ("slice_auc", "patient_auc", "slice_sensitivity", "patient_specificity"):
        lo, hi = r.intervals[k]
        assert 0.0 <= lo <= hi <= 1.0 and (np.isnan(r.pooled[k]) or lo - 1e-9 <= r.pooled[k] <= hi + 1e-9), k
    # each slice is called at its own fold's threshold, the one its bundle carries
    thresholds = {f["fold"]: json.load(open(f"{f['bundle']}/model.json"))["threshold"] for f in r.folds}
    assert all(thresholds[f] == t for f, t in zip(pred["fold"].to_pylist(), pred["threshold"].to_pylist()))
    # the report's section shows it: pooled values with their intervals, and the out-of-fold ROC
    section = crossval_section(RunLayout(str(tmp_path / "run")))
    assert section is not None and crossval_section(RunLayout(str(tmp_path / "empty"))) is None
    (row,) = section.tables[0].rows
    assert row[:5] == ["cv", "classify", "resnet18 64px, 1 epochs; a patient by the max of its slices", 2, 16]
    assert (
        row[5] == f"{cell(r.pooled['slice_auc'])} [{cell(r.intervals['slice_auc'][0])}, "
        f"{cell(r.intervals['slice_auc'][1])}]"
    )
    assert [f.name for f in section.figures] == ["crossval-roc"]
    # a finished cross-validation is reused, not re-run; other settings under its name are refused
    again = run_crossval(shards, out, quick("classify"), name="cv", log=lambda *_: None)
    assert again.reused and again.pooled == pytest.approx(r.pooled, nan_ok=True)
    with pytest.raises(OutputError, match="other inputs or settings"):
        run_crossval(shards, out, quick("classify", seed=1), name="cv", log=lambda *_: None)


@pytest.mark.ray
def test_segmenter_crossval_pools_pixel_counts_with_patient_intervals(shards, tmp_path):
    r = run_crossval(shards, RunLayout(str(tmp_path / "run")).crossval, quick("segment"), log=lambda *_: None)
    assert r.path.endswith("segment-resnet18-2fold")
    ious = [f["metrics"]["competition_iou"] for f in r.folds]
    assert r.pooled["competition_iou"] == pytest.approx(np.nanmean(ious))
    t = pq.read_table(f"{r.path}/predictions.parquet").to_pydict()
    assert len(set(t["patient"])) == sum(f["test_patients"] for f in r.folds)
    i, tr, p = (sum(t[f"{k}_hemorrhagic_pixels"]) for k in ("inter", "true", "pred"))
    assert r.pooled["iou_hemorrhagic"] == pytest.approx(i / (tr + p - i))
    for key in ("iou_ischemic", "iou_hemorrhagic", "dice_hemorrhagic", "mean_lesion_iou"):
        lo, hi = r.intervals[key]
        assert lo <= r.pooled[key] + 1e-9 and r.pooled[key] <= hi + 1e-9
    (row,) = crossval_section(RunLayout(str(tmp_path / "run"))).tables[0].rows
    assert f"mean lesion IoU {cell(r.pooled['mean_lesion_iou'])} [" in row[-1]


def _fake_crossval(path, prob, labels, patients, pool="max", task="classify"):
    """A finished cross-validation folder as run_crossval leaves it: the pooled predictions and the summary."""
    import pyarrow as pa

    path.mkdir(parents=True)
    n = len(prob)
    table = pa.table(
        {
            "id": [f"s{i:04d}" for i in range(n)],
            "patient": list(patients),
            "label": np.asarray(labels, np.int64),
            "probability": np.asarray(prob, np.float64),
            "fold": np.ones(n, np.int32),
            "threshold": np.full(n, 0.5),
        }
    )
    pq.write_table(table, path / "predictions.parquet")
    (path / "crossval.json").write_text(json.dumps({"task": task, "config": {"patient_pool": pool}}))
    return str(path)


def test_compare_gives_a_paired_difference_resampled_by_patient(tmp_path, capsys):
    from strokeray.cli import main
    from strokeray.stages.crossval import compare_crossvals

    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i:02d}" for i in range(40)], 6)
    labels = np.repeat(np.arange(40) % 2, 6)
    noise = rng.random(len(labels))
    weak = _fake_crossval(tmp_path / "weak", 0.8 * noise + 0.2 * labels, labels, patients)
    strong = _fake_crossval(tmp_path / "strong", 0.4 * noise + 0.6 * labels, labels, patients, pool="mean")
    c = compare_crossvals(weak, strong, rounds=300)
    assert (c.slices, c.patients, c.pools) == (240, 40, ("max", "mean"))
    for k in ("slice_auc", "patient_auc"):
        a, b, d = c.values[k]
        low, high = c.intervals[k]
        assert b > a and d == pytest.approx(b - a) and 0 < low <= d <= high
        assert c.below_zero[k] < 0.025
    same = compare_crossvals(weak, weak, rounds=50)
    assert same.values["patient_auc"][2] == 0 and same.intervals["patient_auc"] == [0.0, 0.0]
    # other slices (another ingest, another fold assignment's test set) are refused
    other = _fake_crossval(tmp_path / "other", noise[:-6], labels[:-6], patients[:-6])
    with pytest.raises(ValueError, match="not comparable"):
        compare_crossvals(weak, other, rounds=10)
    seg = _fake_crossval(tmp_path / "seg", noise, labels, patients, task="segment")
    with pytest.raises(ValueError, match="only classifiers"):
        compare_crossvals(weak, seg, rounds=10)
    with pytest.raises(FileNotFoundError, match="not a finished"):
        compare_crossvals(weak, str(tmp_path / "none"), rounds=10)
    # the command prints each metric's A, B and B - A with its interval; a bad pair exits 2
    assert main(["compare", weak, strong, "--rounds", "50", "--pool-b", "max"]) == 0
    out = capsys.readouterr().out
    assert "patient pools max (A) and max (B)" in out and out.count("B-A +") == 2
    assert main(["compare", weak, other, "--rounds", "5"]) == 2
