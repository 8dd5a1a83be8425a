"""Choose the best model with Ray Tune: each trial is a driver function that builds and fits a
``TorchTrainer`` (the Ray 2.60 way), ASHA stops weak trials early, and the best trial's best
checkpoint is published to the model registry with the search's results table.

A search lives in ``OUT/NAME`` (Tune's experiment; the trials' Train runs in ``OUT/NAME/train``).
Running again with the same OUT and NAME resumes an interrupted search (finished trials are not
re-run) or, when it had finished, reports it and publishes nothing new; other settings under the
same name are refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import fsspec

from strokeray.checks import check_positive, check_range
from strokeray.datasets.shard_set import ShardSet
from strokeray.io.json_files import read_json, write_json
from strokeray.learn.augment import AugmentConfig
from strokeray.learn.losses import SegLossConfig
from strokeray.learn.models import ModelConfig
from strokeray.learn.steps import LR_SCHEDULES
from strokeray.learn.tasks import CLASSIFY, get_task
from strokeray.stages.stage_dir import StageDir, settings_digest
from strokeray.stages.train import TrainConfig, checkpoint_complete, datasets_for


@dataclass(frozen=True)
class SearchSpace:
    """What a trial may vary. Every backbone is tried ``samples`` times; the rest is sampled."""

    backbones: tuple[str, ...] = ()  # empty: the task's defaults (Task.search_backbones)
    lr: tuple[float, float] = (1e-4, 3e-3)  # log-uniform range
    weight_decay: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    batch_size: tuple[int, ...] = (8, 16)
    augment: tuple[float, ...] = (0.0, 0.5, 1.0)  # augmentation strength
    input_size: tuple[int, ...] = (128,)
    # learning rate per epoch (train.TrainConfig.schedule): constant, or cosine after a warm-up epoch
    schedule: tuple[str, ...] = ("constant",)
    # the classifier head's dropout (the study's 0.5 slows learning on small sets); the segmenter ignores it
    dropout: tuple[float, ...] = (0.5,)
    # the classifier's head (models.CLASSIFIER_HEADS: the study's dense stack, or one linear layer)
    head: tuple[str, ...] = ("study",)
    # segmenter loss weights (dice, cross-entropy, focal); the classifier ignores them
    seg_loss: tuple[tuple[float, float, float], ...] = ((1.0, 1.0, 0.0), (1.0, 0.0, 1.0), (1.0, 0.5, 0.5))

    def __post_init__(self) -> None:
        if len(self.lr) != 2 or not 0 < self.lr[0] <= self.lr[1]:
            raise ValueError(f"lr must be a range (low, high) with 0 < low <= high, got {self.lr}")
        unknown = set(self.schedule) - set(LR_SCHEDULES)
        if unknown or not self.schedule:
            raise ValueError(f"schedule must name some of {LR_SCHEDULES}, got {self.schedule}")

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        """A space from JSON with any of the field names as keys (lists for tuples)."""
        doc = json.loads(text)
        unknown = set(doc) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown search-space keys: {sorted(unknown)}")
        conv: dict[str, Any] = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in doc.items()}
        return cls(**conv)


@dataclass(frozen=True)
class SearchConfig:
    task: str = CLASSIFY.name
    space: SearchSpace = field(default_factory=SearchSpace)
    samples: int = 2  # trials per backbone
    max_epochs: int = 8
    grace_period: int = 2  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2
    metric: str | None = None  # validation metric to maximise (None: the task's score_metric)
    workers_per_trial: int = 1
    use_gpu: bool = False
    # GPUs a trial reserves (None: one per worker). Under 1 packs small trials onto one GPU
    # (one worker per trial then: DDP ranks cannot share a GPU).
    gpus_per_trial: float | None = None
    cpus_per_worker: float | None = None  # None: 1, or 0.5 when the cluster has under 3 CPUs
    seed: int = 0
    # Every trial reads its splits in one order and torch runs deterministic algorithms
    # (TrainConfig.deterministic): trials then differ by their hyperparameters, not by the order
    # in which Ray Data handed them blocks, and the search repeats itself.
    deterministic: bool = False

    def __post_init__(self) -> None:
        get_task(self.task)
        check_positive(
            samples=self.samples,
            max_epochs=self.max_epochs,
            grace_period=self.grace_period,
            workers_per_trial=self.workers_per_trial,
            cpus_per_worker=self.cpus_per_worker,
        )
        check_range("reduction_factor", self.reduction_factor, 2, 100)
        check_positive(gpus_per_trial=self.gpus_per_trial)
        g = self.gpus_per_trial
        if g is not None and g != self.workers_per_trial and not (self.workers_per_trial == 1 and g < 1):
            raise ValueError(
                f"gpus_per_trial ({self.gpus_per_trial:g}) must be one GPU per worker "
                f"({self.workers_per_trial}), or a fraction of one GPU with one worker per trial"
            )
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period ({self.grace_period}) must not exceed max_epochs ({self.max_epochs})")

    def metric_name(self) -> str:
        return self.metric or get_task(self.task).score_metric

    def trial_gpus(self) -> float:
        return self.gpus_per_trial if self.gpus_per_trial is not None else float(self.workers_per_trial)

    def backbones(self) -> tuple[str, ...]:
        return self.space.backbones or get_task(self.task).search_backbones


@dataclass
class SearchResult:
    path: str
    rows: list[dict]  # one per trial
    best: dict  # the best row
    version: str
    bundle: str
    current: bool
    resumed: bool
    reused: bool  # the search had already finished: nothing was run or published


def param_space(cfg: SearchConfig) -> dict:
    from ray import tune

    s = cfg.space
    space = {
        "backbone": tune.grid_search(list(cfg.backbones())),
        "lr": tune.loguniform(*s.lr) if s.lr[0] < s.lr[1] else s.lr[0],
        "weight_decay": tune.choice(list(s.weight_decay)),
        "batch_size": tune.choice(list(s.batch_size)),
        "augment": tune.choice(list(s.augment)),
        "input_size": tune.choice(list(s.input_size)),
        "schedule": tune.choice(list(s.schedule)),
    }
    if get_task(cfg.task).dense:  # the segmenter's loss weights; the classifier head's dropout
        space["seg_loss"] = tune.choice([list(w) for w in s.seg_loss])
    else:
        space["dropout"] = tune.choice(list(s.dropout))
        space["head"] = tune.choice(list(s.head))
    return space


def trial_train_config(cfg: SearchConfig, params: dict, cpus_per_worker: float) -> TrainConfig:
    """The TrainConfig of one trial: the search's settings plus the trial's sampled values."""
    seg = params.get("seg_loss") or (1.0, 1.0, 0.0)
    return TrainConfig(
        task=cfg.task,
        model=ModelConfig(
            task=cfg.task,
            backbone=params["backbone"],
            dropout=float(params.get("dropout", 0.5)),
            head=str(params.get("head", "study")),
        ),
        epochs=cfg.max_epochs,
        batch_size=int(params["batch_size"]),
        lr=float(params["lr"]),
        weight_decay=float(params["weight_decay"]),
        schedule=str(params.get("schedule", "constant")),
        input_size=int(params["input_size"]),
        augment=AugmentConfig(strength=float(params["augment"])),
        seg_loss=SegLossConfig(dice=float(seg[0]), ce=float(seg[1]), focal=float(seg[2])),
        num_workers=cfg.workers_per_trial,
        use_gpu=cfg.use_gpu,
        gpus_per_worker=cfg.trial_gpus() / cfg.workers_per_trial,
        cpus_per_worker=cpus_per_worker,
        seed=cfg.seed,
        score_metric=cfg.metric_name(),
        deterministic=cfg.deterministic,
    )


def trial_driver(
    params: dict, *, cfg: SearchConfig, shards: str, train_storage: str, cpus_per_worker: float, datasets: dict
) -> None:
    """One Tune trial: fit a TorchTrainer whose per-epoch reports flow back to Tune. ``datasets``
    are the search's: read (and cached in the object store) once for every trial."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from strokeray.datasets.shard_set import ShardSet
    from strokeray.stages.train import prepare_run

    ctx = ray.tune.get_context()
    # One line per start of this trial: a resumed search must not start finished trials again.
    with open(os.path.join(ctx.get_trial_dir(), "attempts.log"), "a") as fh:
        fh.write(f"{time.time():.3f}\n")
    # The Train run is named after the trial, so a restarted trial resumes its own checkpoints.
    run = prepare_run(
        ShardSet.open(shards),
        train_storage,
        trial_train_config(cfg, params, cpus_per_worker),
        name=f"trial-{ctx.get_trial_id()}",
        callbacks=[TuneReportCallback()],
        datasets=datasets,
    )
    result = run.trainer.fit()
    if result.error:
        raise result.error


# CPUs each trial's driver function reserves: it only waits on its Train run (whose workers hold
# the real CPUs), but Tune refuses an empty reservation.
DRIVER_CPUS = 0.01


def concurrency(cfg: SearchConfig, resources: dict) -> tuple[int, float]:
    """(max concurrent trials, CPUs per worker) for a cluster of ``resources`` (``runtime.capacity``:
    what is up, or what the autoscaler can add).

    GPU: as many trials as the GPUs hold at ``gpus_per_trial`` each. CPU: one CPU stays free for
    the Ray Data tasks feeding the workers and the rest is shared out; on 2 cores, 2 trials of one
    half-CPU worker (less the drivers' share, so that a whole CPU stays free).
    """
    from strokeray.stages.runtime import need_gpus

    cpus = float(resources.get("CPU", 1))
    trials = len(cfg.backbones()) * cfg.samples
    if cfg.use_gpu:
        return min(trials, need_gpus(resources, cfg.trial_gpus(), "trial")), cfg.cpus_per_worker or 1.0
    spare = max(cpus - 1.0, 0.5)
    per_worker = cfg.cpus_per_worker or (1.0 if cpus >= 3 else 0.5 - DRIVER_CPUS / cfg.workers_per_trial)
    fits = math.floor(spare / (per_worker * cfg.workers_per_trial + DRIVER_CPUS) + 1e-6)
    return max(1, min(trials, fits)), per_worker


def _fetch_checkpoint(url: str, into: str) -> str:
    os.makedirs(into, exist_ok=True)
    fs, base = fsspec.core.url_to_fs(url)
    for name in ("model.safetensors", "state.json"):
        fs.get(f"{base.rstrip('/')}/{name}", os.path.join(into, name))
    return into


def trial_checkpoints(train_storage: str, trial_id: str) -> list[dict]:
    """The complete checkpoints a trial's Train run kept: url, epoch, that epoch's metrics, history.

    Read from the checkpoints themselves, not from Tune's reports: after an interrupted search
    resumes, a reported checkpoint may have been pruned and a trial's reports may repeat epochs.
    """
    fs, base = fsspec.core.url_to_fs(f"{train_storage.rstrip('/')}/trial-{trial_id}")
    scheme = train_storage.split("://", 1)[0] + "://" if "://" in train_storage else ""
    found = []
    for folder in fs.glob(f"{base}/checkpoint_*"):
        try:
            with fs.open(f"{folder}/state.json", "r") as fh:
                state = json.load(fh)
        except (OSError, ValueError):  # not a checkpoint folder (the manager's snapshot file), cut short, or cut off
            continue
        if not checkpoint_complete(fs, folder, state):
            continue  # its copy to storage was cut off (a lost node): Train never registered it
        found.append(
            {
                "url": scheme + folder,
                "epoch": state["epoch"],
                "metrics": state["history"][-1],
                "history": state["history"],
            }
        )
    return sorted(found, key=lambda c: c["epoch"])


def results_table(grid, cfg: SearchConfig, train_storage: str) -> list[dict]:
    """One row per trial: its parameters, best checkpointed validation score and its epoch, epochs
    run, time, status, and the checkpoints to export."""
    rows = []
    for result in grid:
        last = result.metrics or {}
        trial_id = last.get("trial_id") or "_".join(os.path.basename(result.path).split("_")[2:4])
        row = {"trial_id": trial_id, **{f"param_{k}": v for k, v in (result.config or {}).items()}}
        ckpts = trial_checkpoints(train_storage, trial_id)
        if not ckpts:
            row.update(
                {
                    "status": "error" if result.error else "no_result",
                    "epochs_run": 0,
                    "best_score": float("nan"),
                    "best_epoch": 0,
                    "time_s": 0.0,
                    "checkpoint": "",
                    "last_checkpoint": "",
                    "error": str(result.error or "")[:500],
                }
            )
            rows.append(row)
            continue
        best, latest = max(ckpts, key=lambda c: c["metrics"]["val_score"]), ckpts[-1]
        epochs = int(latest["epoch"])
        df = result.metrics_dataframe
        row.update(
            {
                "status": "error" if result.error else ("complete" if epochs >= cfg.max_epochs else "stopped_early"),
                "epochs_run": epochs,
                "best_score": float(best["metrics"]["val_score"]),
                "best_epoch": int(best["epoch"]),
                "time_s": float(df["time_total_s"].max()) if df is not None and "time_total_s" in df else float("nan"),
                "checkpoint": best["url"],
                "last_checkpoint": latest["url"],
                "error": str(result.error or "")[:500],
            }
        )
        for key in (
            "val_accuracy",
            "val_auc",
            "val_patient_auc",
            "val_mean_lesion_iou",
            "val_competition_iou",
            "val_loss",
        ):
            if key in best["metrics"]:
                value = best["metrics"][key]
                row[f"best_{key}"] = float(value) if value is not None and value == value else None
        rows.append(row)
    return rows


# What a search writes beside Tune's own files: its settings (first) and what it published (last).
SETTINGS, PUBLISHED = "strokeray-search.json", "published.json"
PUBLISHED_FIELDS = ("rows", "best", "version", "bundle", "current")  # published.json: a SearchResult's
# Everything in a search folder that the search wrote (what --overwrite may remove): Tune's state
# and trial folders, the trials' Train runs, and the two documents above.
SEARCH_OUTPUTS = (
    SETTINGS,
    PUBLISHED,
    "train",
    "tuner.pkl",
    "trainable.pkl",
    ".validate_storage_marker",
    "driver_artifacts",
    "experiment_state-*",
    "basic-variant-state-*",
    "search_gen_state-*",
    "trial_driver_*",
)


def published(path: str) -> dict | None:
    """What a finished search at ``path`` published (registry version, bundle, rows), else None."""
    return read_json(f"{path.rstrip('/')}/{PUBLISHED}")


def settings_of(path: str) -> dict:
    """The settings a search at ``path`` was started with ({} when none)."""
    return read_json(f"{path.rstrip('/')}/{SETTINGS}", {})


# Settings added after searches were already on disk, with the value every earlier search ran
# with: left out of a search's settings at that value, so an earlier search keeps its digest and
# resumes (instead of being refused as "other settings").
LATER_SETTINGS = {"deterministic": False}


def search_settings(shards: ShardSet, cfg: SearchConfig) -> dict:
    """What makes a search this search: the shards (and their version: a search finished on other
    data is not this one's result) and the settings."""
    config = json.loads(json.dumps(asdict(cfg)))
    for key, before in LATER_SETTINGS.items():
        if config[key] == before:
            del config[key]
    return {"shards": shards.url, "shards_version": shards.version, "config": config}


def make_tuner(path: str, trainable, cfg: SearchConfig, max_trials: int, settings: dict, log):
    """A Tuner that resumes the interrupted search in ``path``, or starts it (writing its settings)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if settings_of(path) and tune.Tuner.can_restore(path):
        log(f"[tune] resuming the interrupted search {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True), True
    write_json(f"{path}/{SETTINGS}", settings)
    log(
        f"[tune] {len(cfg.backbones()) * cfg.samples} trials ({cfg.samples} per backbone over "
        f"{', '.join(cfg.backbones())}), {max_trials} at a time, ASHA on {cfg.metric_name()} -> {path}"
    )
    storage, name = path.rstrip("/").rsplit("/", 1)
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric="val_score",
            mode="max",
            num_samples=cfg.samples,
            max_concurrent_trials=max_trials,
            scheduler=ASHAScheduler(
                max_t=cfg.max_epochs,
                grace_period=min(cfg.grace_period, cfg.max_epochs),
                reduction_factor=cfg.reduction_factor,
            ),
            search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=max_trials),
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, failure_config=tune.FailureConfig(max_failures=1)
        ),
    ), False


def best_row(rows: list[dict], path: str) -> dict:
    scored = [r for r in rows if r["best_score"] == r["best_score"] and r["checkpoint"]]
    if not scored:
        errors = "; ".join(r["error"] for r in rows if r["error"])
        raise RuntimeError(f"no trial of {path} produced a checkpoint: {errors or 'no results'}")
    return max(scored, key=lambda r: r["best_score"])


def publish_best(
    best: dict,
    rows: list[dict],
    cfg: SearchConfig,
    shards: ShardSet,
    path: str,
    settings: dict,
    per_worker: float,
    registry: str,
):
    """Export the best trial's best checkpoint (with its trial's whole history) to the registry."""
    from strokeray.stages import registry as reg
    from strokeray.stages.train import export_bundle, with_model_shape

    params = {k[len("param_") :]: v for k, v in best.items() if k.startswith("param_")}
    train_cfg = with_model_shape(trial_train_config(cfg, params, per_worker), shards)
    with tempfile.TemporaryDirectory() as tmp:
        best_dir = _fetch_checkpoint(best["checkpoint"], os.path.join(tmp, "best"))
        last_dir = _fetch_checkpoint(best["last_checkpoint"], os.path.join(tmp, "last"))
        best_epoch = read_json(os.path.join(best_dir, "state.json"))["history"][-1]
        history = read_json(os.path.join(last_dir, "state.json"))["history"]
        search_doc = {"path": path, "metric": cfg.metric_name(), **settings, "best": best, "rows": rows}
        summary = {
            "metric": cfg.metric_name(),
            "value": best["best_score"],
            "dataset": shards.card["config_digest"],
            "search": path,
            "trial_id": best["trial_id"],
            "backbone": params["backbone"],
        }
        return reg.publish(
            registry,
            cfg.task,
            lambda url: export_bundle(best_dir, url, train_cfg, shards, best_epoch, history),
            search_doc,
            rows,
            summary,
        )


def run_search(
    shards: str,
    out: str,
    cfg: SearchConfig,
    name: str | None = None,
    registry: str = "runs/registry",
    overwrite: bool = False,
    log=print,
) -> SearchResult:
    """Run (or resume) the search and publish its best trial to ``registry``."""
    from ray import tune

    from strokeray.stages.runtime import absolute, cluster_capacity, ensure_ray

    get_task(cfg.task)
    # Tune runs each trial in its own working directory: a relative local path would not resolve.
    data = ShardSet.open(absolute(shards))
    name = name or f"{cfg.task}-search"
    path = f"{(os.path.abspath(out) if '://' not in out else out).rstrip('/')}/{name}"
    settings = search_settings(data, cfg)
    stage = StageDir(path, "tune", SEARCH_OUTPUTS, done=PUBLISHED)
    stage.adopt(SETTINGS, settings_digest(settings_of(path)))  # a search made before the marker
    # Another search here is refused, or with overwrite its files (only those) are removed; a
    # folder strokeray did not make is never written into.
    stage.claim((data.url,), settings_digest(settings), overwrite)
    done = published(path)
    if done:
        log(f"[tune] {path} finished earlier; its best is registry version {done['version']}")
        return SearchResult(path=path, resumed=False, reused=True, **{k: done[k] for k in PUBLISHED_FIELDS})
    ensure_ray()
    max_trials, per_worker = concurrency(cfg, cluster_capacity())
    # Read once here, while no trial holds the CPUs: each trial reading its own copy took about
    # 40 s of a trial's start on 2 CPUs (its data tasks waiting for a CPU budget) and stored the
    # cached splits once per trial.
    datasets = datasets_for(data, get_task(cfg.task), ordered=cfg.deterministic, seed=cfg.seed)
    trainable = tune.with_parameters(
        trial_driver,
        cfg=cfg,
        shards=data.url,
        train_storage=f"{path}/train",
        cpus_per_worker=per_worker,
        datasets=datasets,
    )
    trainable = tune.with_resources(trainable, {"CPU": DRIVER_CPUS})
    tuner, resumed = make_tuner(path, trainable, cfg, max_trials, settings, log)
    rows = results_table(tuner.fit(), cfg, f"{path}/train")
    best = best_row(rows, path)
    pub = publish_best(best, rows, cfg, data, path, settings, per_worker, registry)
    doc = {"version": pub.version, "bundle": pub.bundle, "current": pub.current, "best": best, "rows": rows}
    write_json(f"{path}/{PUBLISHED}", doc)  # written last: marks the search finished
    log(
        f"[tune] best trial {best['trial_id']} ({best['param_backbone']}): {cfg.metric_name()}="
        f"{best['best_score']:.4f} at epoch {best['best_epoch']} -> {pub.bundle}"
        + (" (now current)" if pub.current else "")
    )
    return SearchResult(path=path, resumed=resumed, reused=False, **doc)
