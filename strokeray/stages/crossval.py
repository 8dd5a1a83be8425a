"""Patient-grouped, stratified K-fold cross-validation: the one way strokeray measures a model.

Each fold is a Ray Train run (``stages.train``) on the same shards with the patients' splits
replaced: the fold's patients are its test split, a stratified share of the others validation
(checkpoint and operating-point choice), the rest training. Folds run side by side where the
cluster's resources allow. The folds' test predictions, pooled, give the classifier's slice and
patient AUC, sensitivity and specificity (each slice called at its own fold's operating point),
each with a 95 % interval from resampling patients; the segmenter gets each fold's IoU, Dice and
competition IoU and their mean.

A cross-validation lives in ``OUT/NAME``: ``fold-K/`` (the fold's Train run, bundle, test metrics
and predictions), ``predictions.parquet`` (all folds) and ``crossval.json``, written last. Running
again resumes unfinished folds; other settings under the same name are refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from strokeray.checks import check_choice, check_positive, check_range
from strokeray.datasets.shard_set import ShardSet
from strokeray.datasets.splits import assign_folds, fold_splits
from strokeray.io.json_files import read_json, write_json
from strokeray.learn.metrics import (
    PATIENT_POOLS,
    overlap_summary,
    patient_bootstrap,
    patient_bootstrap_draws,
    percentile_intervals,
    pooled_binary,
)
from strokeray.learn.tasks import get_task
from strokeray.stages.stage_dir import StageDir, settings_digest
from strokeray.stages.train import TrainConfig

SUMMARY, PREDICTIONS = "crossval.json", "predictions.parquet"
FOLD_METRICS, FOLD_PREDICTIONS = "test.json", "test-predictions.parquet"


@dataclass(frozen=True)
class CrossvalConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    folds: int = 5
    val_share: float = 0.15  # of each fold's training patients (per class): checkpoint and threshold choice
    seed: int = 0  # fold assignment
    parallel: int | None = None  # folds at once (None: as many as the cluster's CPUs or GPUs hold)
    bootstrap: int = 2000  # patient resamples behind each interval
    patient_pool: str = "max"  # a patient's score from its slices': max, or mean (labels given per patient)

    def __post_init__(self) -> None:
        check_range("folds", self.folds, 2, 100)
        check_range("val_share", self.val_share, 0.01, 0.5)
        check_positive(parallel=self.parallel, bootstrap=self.bootstrap)
        check_choice("patient_pool", self.patient_pool, PATIENT_POOLS)


@dataclass
class CrossvalResult:
    path: str
    folds: list[dict]  # one row per fold: patients and slices per split, test metrics
    pooled: dict  # out-of-fold metrics (classifier) or the folds' mean (segmenter)
    intervals: dict  # metric -> [low, high], 95 % (classifier only)
    reused: bool


def fold_plan(data: ShardSet, cfg: CrossvalConfig) -> list[dict[str, str]]:
    """Every fold's patient -> split map, stratified by the task's stratum column."""
    strata = data.patient_strata(get_task(cfg.train.task).stratum_column)
    fold_of = assign_folds(strata, cfg.folds, cfg.seed)
    return [fold_splits(strata, fold_of, k, cfg.val_share, cfg.seed) for k in range(cfg.folds)]


def parallel_folds(cfg: CrossvalConfig, resources: dict) -> tuple[int, float | None]:
    """(folds at once, CPUs per training worker; None: train's own share) on ``resources``.

    GPU: one fold per ``num_workers`` GPUs. CPU: one CPU stays free for Ray Data, the rest holds
    as many folds of whole-CPU workers as fit (one fold, with train's sharing, under 3 CPUs).
    """
    t = cfg.train
    if t.use_gpu:
        fits = int(resources.get("GPU", 0)) // t.num_workers
        return max(1, min(cfg.parallel or fits, fits, cfg.folds)), t.cpus_per_worker
    cpus = float(resources.get("CPU", 1))
    per_worker = t.cpus_per_worker or 1.0
    fits = math.floor((cpus - 1.0) / (per_worker * t.num_workers) + 1e-6)
    if fits < 2 or cfg.parallel == 1:
        return 1, t.cpus_per_worker
    return min(cfg.parallel or fits, fits, cfg.folds), per_worker


def run_fold(data: ShardSet, splits: dict[str, str], path: str, k: int, train: TrainConfig, log=print) -> dict:
    """Train fold ``k`` (resuming its run) and score its test patients; its row of the summary."""
    from strokeray.stages.evaluate import evaluate_on_cluster
    from strokeray.stages.train import run_train

    fold_dir = f"{path}/fold-{k + 1}"
    done = read_json(f"{fold_dir}/{FOLD_METRICS}")
    if done is None:
        fold = data.with_splits(splits)
        result = run_train(fold, path, train, name=f"fold-{k + 1}", log=log)
        evaluation = evaluate_on_cluster(
            result.bundle, fold, "test", train.use_gpu, predictions=f"{fold_dir}/{FOLD_PREDICTIONS}"
        )
        done = {
            "fold": k + 1,
            "bundle": result.bundle,
            "best_epoch": result.best_metrics.get("epoch"),
            "metrics": evaluation.metrics,
        }
        write_json(f"{fold_dir}/{FOLD_METRICS}", done)  # last: the fold is finished
    counts = {s: sum(v == s for v in splits.values()) for s in ("train", "val", "test")}
    return {**done, **{f"{s}_patients": n for s, n in counts.items()}}


def run_folds(data: ShardSet, plan: list[dict[str, str]], path: str, cfg: CrossvalConfig, log) -> list[dict]:
    """Every fold's row, folds running side by side as Ray tasks when resources allow."""
    import dataclasses

    import ray

    at_once, per_worker = parallel_folds(cfg, ray.cluster_resources())
    train = dataclasses.replace(cfg.train, cpus_per_worker=per_worker)
    log(f"[crossval] {cfg.folds} folds of {len(plan[0])} patients, {at_once} at a time -> {path}")
    if at_once == 1:
        return [run_fold(data, splits, path, k, train, log) for k, splits in enumerate(plan)]
    # the task only waits on its Train run, whose workers hold the real resources
    remote = ray.remote(num_cpus=0.01)(run_fold)
    pending, rows = list(enumerate(plan)), []
    running: list = []
    while pending or running:
        while pending and len(running) < at_once:
            k, splits = pending.pop(0)
            running.append(remote.remote(data, splits, path, k, train))
        ready, running = ray.wait(running, num_returns=1)
        rows.append(ray.get(ready[0]))
    return sorted(rows, key=lambda r: r["fold"])


def pooled_predictions(path: str, rows: list[dict]) -> pa.Table:
    """All folds' test predictions, with each slice's fold and its fold's operating point."""
    tables = []
    for row in rows:
        with fsspec.open(f"{path}/fold-{row['fold']}/{FOLD_PREDICTIONS}", "rb") as fh:
            t = pq.read_table(fh)
        t = t.append_column("fold", pa.array([row["fold"]] * t.num_rows, pa.int32()))
        if "threshold" in row["metrics"]:
            t = t.append_column("threshold", pa.array([row["metrics"]["threshold"]] * t.num_rows, pa.float64()))
        tables.append(t)
    return pa.concat_tables(tables)


def summarise(table: pa.Table, rows: list[dict], cfg: CrossvalConfig) -> tuple[dict, dict]:
    """(pooled metrics, 95 % patient-bootstrap intervals). The segmenter's IoU and Dice pool the
    folds' pixel counts; its competition IoU (dilated/eroded truth) is the folds' mean, no interval."""
    task = get_task(cfg.train.task)
    if task.dense:
        pooled, intervals = overlap_summary(table.to_pydict(), task.class_names[1:], cfg.bootstrap, cfg.seed)
        pooled["competition_iou"] = float(np.nanmean([r["metrics"]["competition_iou"] for r in rows]))
        return pooled, {k: list(v) for k, v in intervals.items()}
    prob, lab = np.asarray(table["probability"]), np.asarray(table["label"])
    pat, thr, pool = np.asarray(table["patient"]), np.asarray(table["threshold"]), cfg.patient_pool
    pooled = pooled_binary(prob, lab, pat, thr, pool)
    intervals = patient_bootstrap(
        pat, lambda i, g: pooled_binary(prob[i], lab[i], g, thr[i], pool), cfg.bootstrap, cfg.seed
    )
    return pooled, {k: list(v) for k, v in intervals.items()}


def run_crossval(
    shards: str, out: str, cfg: CrossvalConfig, name: str | None = None, overwrite: bool = False, log=print
) -> CrossvalResult:
    """Cross-validate ``cfg.train`` on ``shards`` (an ingest OUT) in ``out/<name>``."""
    from strokeray.stages.runtime import absolute, ensure_ray

    task = get_task(cfg.train.task)
    data = ShardSet.open(absolute(shards))  # Ray tasks run in other working directories
    name = name or f"{task.name}-{cfg.train.model.backbone}-{cfg.folds}fold"
    path = f"{(os.path.abspath(out) if '://' not in out else out).rstrip('/')}/{name}"
    settings = {"shards": data.url, "shards_version": data.version, "config": json.loads(json.dumps(asdict(cfg)))}
    stage = StageDir(
        path, "crossval", (SUMMARY, PREDICTIONS, *(f"fold-{k + 1}" for k in range(cfg.folds))), done=SUMMARY
    )
    stage.claim(inputs=(data.url,), digest=settings_digest(settings), overwrite=overwrite)
    done = stage.finished()
    if done is not None:
        log(f"[crossval] {path} finished earlier")
        return CrossvalResult(path, done["folds"], done["pooled"], done["intervals"], reused=True)
    ensure_ray()
    rows = run_folds(data, fold_plan(data, cfg), path, cfg, log)
    table = pooled_predictions(path, rows)
    with fsspec.open(f"{path}/{PREDICTIONS}", "wb") as fh:
        pq.write_table(table, fh)
    pooled, intervals = summarise(table, rows, cfg)
    stage.finish(
        {
            **settings,
            "task": task.name,
            "folds": rows,
            "pooled": pooled,
            "intervals": intervals,
            "slices": table.num_rows,
        }
    )
    log(
        f"[crossval] {task.name}, {cfg.folds} folds: "
        + ", ".join(
            f"{k}={v:.3f}" + (" [{:.3f}, {:.3f}]".format(*intervals[k]) if k in intervals else "")
            for k, v in pooled.items()
            if k.endswith(("auc", "sensitivity", "specificity", "iou"))
        )
    )
    return CrossvalResult(path, rows, pooled, intervals, reused=False)


@dataclass
class Comparison:
    """Two classifier cross-validations on the same slices, ``b`` against ``a``."""

    a: str
    b: str
    pools: tuple[str, str]  # each run's patient pool
    slices: int
    patients: int
    values: dict  # metric -> (a, b, b - a)
    intervals: dict  # metric -> 95 % interval of b - a, resampling patients (paired)
    below_zero: dict  # metric -> share of resamples in which b - a <= 0


COMPARED = ("slice_auc", "patient_auc")


def compare_crossvals(
    a: str, b: str, pool_a: str | None = None, pool_b: str | None = None, rounds: int = 2000, seed: int = 0
) -> Comparison:
    """Paired comparison of the out-of-fold predictions of two finished cross-validations (OUT/NAME
    folders) on the same slices: each run's slice and patient AUC (a patient by each run's own
    ``--patient-pool`` unless given), their difference and its 95 % interval from resampling
    patients, the same patients for both runs in every draw. Far narrower than comparing the two
    runs' own intervals: a patient the task finds hard is hard for both."""
    runs = []
    for path, pool in ((a, pool_a), (b, pool_b)):
        path = path.rstrip("/")
        done = read_json(f"{path}/{SUMMARY}")
        if done is None:
            raise FileNotFoundError(f"{path} holds no {SUMMARY}: not a finished cross-validation")
        if get_task(done["task"]).dense:
            raise ValueError(f"{path} is a {done['task']} cross-validation; only classifiers are compared")
        with fsspec.open(f"{path}/{PREDICTIONS}", "rb") as fh:
            t = pq.read_table(fh, columns=["id", "patient", "label", "probability", "threshold"])
        runs.append((t.sort_by("id"), pool or done["config"].get("patient_pool", "max")))
    (ta, pa_), (tb, pb) = runs
    if not all(ta[c].equals(tb[c]) for c in ("id", "label", "patient")):
        raise ValueError(f"{a} and {b} did not predict the same slices, patients and labels: not comparable")
    lab, pat = np.asarray(ta["label"]), np.asarray(ta["patient"])
    prob = [np.asarray(t["probability"]) for t in (ta, tb)]
    thr = [np.asarray(t["threshold"]) for t in (ta, tb)]

    def both(i, g) -> tuple[dict, dict]:
        return (
            pooled_binary(prob[0][i], lab[i], g, thr[0][i], pa_),
            pooled_binary(prob[1][i], lab[i], g, thr[1][i], pb),
        )

    ma, mb = both(np.arange(len(lab)), pat)

    def difference(i, g) -> dict:
        da, db = both(i, g)
        return {k: db[k] - da[k] for k in COMPARED}

    draws = patient_bootstrap_draws(pat, difference, rounds, seed)
    intervals = percentile_intervals(draws)
    return Comparison(
        a=a,
        b=b,
        pools=(pa_, pb),
        slices=len(lab),
        patients=len(set(pat.tolist())),
        values={k: (ma[k], mb[k], mb[k] - ma[k]) for k in COMPARED},
        intervals={k: list(v) for k, v in intervals.items()},
        below_zero={k: float(np.mean(v <= 0)) for k, v in draws.items()},
    )
