"""Train the classifier or the segmenter with Ray Train (TorchTrainer, DDP) on ingest shards.

One loop serves both tasks; what differs (columns, metrics) comes from ``TaskSpec``, the steps
(inputs, loss, augmentation) from ``learn.steps.TaskSteps``, which the benchmark's plain loop shares.
Each epoch reports metrics and, from rank 0, a checkpoint (safetensors weights, optimizer state,
history). Ray keeps the best two by validation score plus the latest; a dead worker restarts the
group from the latest checkpoint (FailureConfig); running again with the same ``--out`` and
``--name`` resumes. The best checkpoint is exported as a model bundle.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace

import fsspec
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from strokeray.checks import check_positive, check_range
from strokeray.learn.augment import AugmentConfig
from strokeray.learn.losses import SegLossConfig
from strokeray.learn.models import ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    task: str = "classify"  # classify | segment
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    input_size: int | None = None  # resize the views (None: as ingested, 224 / 256)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seg_loss: SegLossConfig = field(default_factory=SegLossConfig)
    balance_classes: bool = True  # inverse-frequency class weights in the classifier's loss
    num_workers: int = 2  # one per GPU on a GPU cluster
    use_gpu: bool = False
    # CPUs each worker reserves; None: 1 with GPUs, else a share that leaves one CPU to the Ray
    # Data tasks feeding the workers (reserve every CPU for training and the data never comes).
    cpus_per_worker: float | None = None
    max_failures: int = 2
    seed: int = 0
    # The validation metric that picks the best checkpoint (None: the task's, see TASKS). Losses
    # (names ending in "loss") are minimised: ``val_score`` is then the negated loss.
    score_metric: str | None = None
    # Batches of un-augmented training data that re-estimate BatchNorm statistics before each
    # validation (learn.steps.TaskSteps.recalibrate_bn; 0: keep the running averages).
    bn_recalibration_batches: int = 50
    # Read the shards once into Ray's object store rather than every epoch (None: when they fit
    # in a quarter of it; see datasets_for).
    cache_data: bool | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        check_positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, num_workers=self.num_workers,
                       cpus_per_worker=self.cpus_per_worker)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("input_size", self.input_size, 32, 4096)
        check_range("max_failures", self.max_failures, 0, 100)
        check_range("bn_recalibration_batches", self.bn_recalibration_batches, 0, 1e9)

    def score_name(self) -> str:
        return self.score_metric or TASKS[self.task].score_name

    def score_of(self, metrics: dict) -> float:
        """``val_score``: the score metric, higher is better, NaN or missing as -inf's stand-in."""
        value = metrics.get(self.score_name(), float("nan"))
        if value is None or value != value:
            return -1e9 if self.score_name().endswith("loss") else -1.0  # never the best
        return -float(value) if self.score_name().endswith("loss") else float(value)


@dataclass
class TaskSpec:
    score_name: str  # the validation metric that picks the best checkpoint
    columns: tuple[str, ...]


TASKS = {
    "classify": TaskSpec("val_accuracy", ("cls_image", "label", "patient", "split")),
    "segment": TaskSpec("val_mean_lesion_iou", ("seg_image", "seg_mask", "has_mask", "lesion", "split")),
}


def split_rows(table, split: str, task: str):
    """The rows of a shard table that belong to ``split`` and carry a truth for ``task``."""
    keep = pc.equal(table["split"], split)
    if task == "classify":
        keep = pc.and_(keep, pc.greater_equal(table["label"], 0))
    else:  # annotated slices, and slices known to hold no lesion (an all-background truth)
        keep = pc.and_(keep, pc.or_(table["has_mask"], pc.equal(table["lesion"], 0)))
    return table.filter(keep)


# CPUs a data task (read a shard, keep a split) reserves. The work is light next to training, and
# a whole CPU per task can leave the data unschedulable once training workers and concurrent Tune
# trials hold most of the CPUs (a silent hang).
DATA_TASK_CPUS = 0.25


def split_bytes(shards: str, columns: list[str]) -> int:
    """Uncompressed bytes of ``columns`` over all shards, from the Parquet footers alone."""
    fs, base = fsspec.core.url_to_fs(shards)
    total = 0
    for path in fs.glob(f"{base.rstrip('/')}/shards/*.parquet"):
        with fs.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                if col.path_in_schema.split(".", 1)[0] in columns:
                    total += col.total_uncompressed_size
    return total


def datasets_for(shards: str, task: str, cache: bool | None = None):
    """Ray datasets of the train and val splits, reading only the columns the task needs.

    ``cache``: read once into Ray's object store instead of re-reading the shards every epoch
    (None: when the task's columns take under a quarter of the object store).
    """
    import ray

    spec = TASKS[task]
    base = ray.data.read_parquet(shards.rstrip("/") + "/shards", num_cpus=DATA_TASK_CPUS).select_columns(
        list(spec.columns))
    if cache is None:
        store = ray.cluster_resources().get("object_store_memory", 0)
        cache = split_bytes(shards, list(spec.columns)) < 0.25 * store
    out = {}
    for split in ("train", "val"):
        ds = base.map_batches(split_rows, batch_format="pyarrow", fn_kwargs={"split": split, "task": task},
                              num_cpus=DATA_TASK_CPUS)
        out[split] = ds.materialize() if cache else ds
    return out


def class_weights(shards: str) -> list[float]:
    """Inverse-frequency weights of labels 0/1 in the training split."""
    fs, base = fsspec.core.url_to_fs(shards)
    counts = np.zeros(2)
    for path in fs.glob(f"{base.rstrip('/')}/shards/*.parquet"):
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh, columns=["label", "split"])
        labels = np.asarray(t.filter(pc.equal(t["split"], "train"))["label"])
        for c in (0, 1):
            counts[c] += (labels == c).sum()
    counts = np.maximum(counts, 1)
    return list(counts.sum() / (2 * counts))


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def train_loop(config: dict) -> None:
    """The per-worker loop run by Ray Train."""
    import itertools
    import time

    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file

    from strokeray.learn.metrics import SegmentationMeter, binary_report, operating_threshold, patient_level
    from strokeray.learn.models import build_model
    from strokeray.learn.steps import FitMeter, TaskSteps

    cfg: TrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    device = ray.train.torch.get_device()
    model = build_model(cfg.model)
    start_epoch, best, history = 0, -math.inf, []
    checkpoint = ray.train.get_checkpoint()
    optimizer_state = None
    if checkpoint:
        with checkpoint.as_directory() as d:
            model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
            optimizer_state = torch.load(os.path.join(d, "optimizer.pt"), weights_only=True)
            state = json.loads(open(os.path.join(d, "state.json")).read())
            start_epoch, best, history = state["epoch"], state["best"], state["history"]
    model = ray.train.torch.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    steps = TaskSteps(cfg.task, device, cfg.input_size, cfg.augment, cfg.seg_loss,
                      config.get("class_weights"), seed=cfg.seed * 1000 + rank)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        total, seen = 0.0, 0
        fit = FitMeter(cfg.task)
        began = time.perf_counter()
        # numpy batches: the patient key is a string column, which torch batches cannot carry.
        for batch in train_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                              local_shuffle_buffer_size=256, local_shuffle_seed=cfg.seed + epoch):
            loss_sum, n = steps.train_step(model, optimizer, batch, fit)
            total += loss_sum
            seen += n
        train_seconds = time.perf_counter() - began
        if cfg.bn_recalibration_batches:
            bare = _unwrap(model)  # not through DDP, which would broadcast rank 0's buffers every forward
            steps.recalibrate_bn(bare, itertools.islice(
                train_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"), cfg.bn_recalibration_batches))
            if world > 1:  # every rank estimated on its own shard: average, so all validate one model
                for m in bare.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        for buf in (m.running_mean, m.running_var):
                            dist.all_reduce(buf)
                            buf /= world
        model.eval()
        val_loss, val_seen, outputs = 0.0, 0, []
        meter = SegmentationMeter(3)
        for batch in val_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"):
            logits, y, loss_sum = steps.eval_step(model, batch)
            val_loss += loss_sum
            val_seen += len(y)
            if cfg.task == "classify":
                prob = logits.float().softmax(1)[:, 1].cpu().numpy()
                outputs.append((prob, y.cpu().numpy(), np.asarray(batch["patient"])))
            else:
                meter.update(logits.argmax(1).cpu().numpy(), y.cpu().numpy())
        local = {"train": (total, seen, train_seconds), "val": (val_loss, val_seen), "outputs": outputs, "meter": meter,
                 "fit": fit}
        gathered = [None] * world
        if world > 1:
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        train_seen = sum(g["train"][1] for g in gathered)
        metrics = {"epoch": epoch + 1,
                   "started_at_epoch": start_epoch,  # > 0 after a resume from a checkpoint
                   "train_loss": sum(g["train"][0] for g in gathered) / max(1, train_seen),
                   "val_loss": sum(g["val"][0] for g in gathered) / max(1, sum(g["val"][1] for g in gathered)),
                   # the training pass alone (data feeding included; validation and checkpoint not)
                   "train_images": train_seen,
                   "train_images_per_s": train_seen / max(1e-9, max(g["train"][2] for g in gathered)),
                   "torch_threads": torch.get_num_threads()}
        total_fit = FitMeter(cfg.task)
        for g in gathered:
            total_fit.merge(g["fit"])
        metrics.update(total_fit.report())
        if cfg.task == "classify":
            outs = [o for g in gathered for o in g["outputs"]]
            if outs:
                prob = np.concatenate([o[0] for o in outs])
                lab = np.concatenate([o[1] for o in outs])
                pat = np.concatenate([o[2] for o in outs])
                metrics.update(binary_report(lab, prob).as_dict("val_"))
                # the operating point the bundle carries (accuracy above stays at 0.5, comparable across epochs)
                metrics["val_threshold"] = operating_threshold(lab, prob)
                plab, pprob = patient_level(pat, lab, prob)
                metrics.update(binary_report(plab, pprob).as_dict("val_patient_"))
        else:
            total_meter = SegmentationMeter(3)
            for g in gathered:
                total_meter.merge(g["meter"])
            metrics.update({f"val_{k}": v for k, v in total_meter.report().items()})
        metrics["val_score"] = cfg.score_of(metrics)
        best = max(best, metrics["val_score"])
        history.append({k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()})
        if rank == 0:
            print(f"[train] epoch {epoch + 1}/{cfg.epochs}: train_loss={metrics['train_loss']:.4f} "
                  f"val_loss={metrics['val_loss']:.4f} {cfg.score_name()}={metrics.get(cfg.score_name(), float('nan')):.4f} "
                  f"({metrics['train_images_per_s']:.1f} images/s)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_file({k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()},
                          os.path.join(tmp, "model.safetensors"))
                torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
                with open(os.path.join(tmp, "state.json"), "w") as fh:
                    json.dump({"epoch": epoch + 1, "best": best, "history": history}, fh)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)


@dataclass
class TrainResult:
    out: str
    bundle: str
    best_checkpoint: str
    best_metrics: dict
    history: list[dict]


@dataclass
class PreparedRun:
    """A configured trainer and what exporting its bundle needs."""

    trainer: object  # ray.train.torch.TorchTrainer
    cfg: TrainConfig  # with the model's channels and classes filled in from the shards
    card: dict
    storage: str
    name: str


def read_card(shards: str) -> dict:
    fs, card_path = fsspec.core.url_to_fs(f"{shards.rstrip('/')}/card.json")
    if not fs.exists(card_path):
        raise FileNotFoundError(f"{shards} holds no card.json: not a finished ingest output (run `strokeray ingest`)")
    with fs.open(card_path, "r") as fh:
        return json.load(fh)


def shards_version(shards: str) -> str:
    """A digest of the shard files a card lists (names, rows, bytes): changes when ingest adds or redoes any."""
    import hashlib

    return hashlib.sha256(json.dumps(read_card(shards)["shards"], sort_keys=True).encode()).hexdigest()[:16]


def with_model_shape(cfg: TrainConfig, card: dict) -> TrainConfig:
    """``cfg`` with the model's input channels (the shards' HU windows) and classes (the task's)."""
    windows = card["config"]["records"]["preprocess"]["windows"]
    return replace(cfg, model=replace(cfg.model, task=cfg.task, num_classes=2 if cfg.task == "classify" else 3,
                                      in_channels=len(windows)))


def cpus_per_worker(cfg: TrainConfig) -> float:
    """The CPUs each worker reserves: see ``TrainConfig.cpus_per_worker``."""
    import ray

    if cfg.cpus_per_worker is not None:
        return cfg.cpus_per_worker
    if cfg.use_gpu:
        return 1.0
    total = float(ray.cluster_resources().get("CPU", 1))
    return max(0.1, min(1.0, (total - 1.0) / cfg.num_workers))


def prepare_run(shards: str, out: str, cfg: TrainConfig, name: str | None = None, callbacks=()) -> PreparedRun:
    """A TorchTrainer for ``cfg`` on ``shards``, storing under ``out/<name>`` (Ray must be up)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if cfg.task not in TASKS:
        raise ValueError(f"task must be classify or segment, got {cfg.task!r}")
    card = read_card(shards)
    cfg = with_model_shape(cfg, card)
    name = name or f"{cfg.task}-{cfg.model.backbone}"
    weights = class_weights(shards) if cfg.task == "classify" and cfg.balance_classes else None
    storage = os.path.abspath(out) if "://" not in out else out
    cpus = cpus_per_worker(cfg)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg, "class_weights": weights},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cpus, **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_score", checkpoint_score_order="max"),
            callbacks=list(callbacks),
        ),
        datasets=datasets_for(shards, cfg.task, cfg.cache_data),
    )
    return PreparedRun(trainer=trainer, cfg=cfg, card=card, storage=storage, name=name)


def export_bundle(checkpoint_dir: str, bundle_dir: str, cfg: TrainConfig, card: dict, metrics: dict,
                  history: list[dict]) -> str:
    """Write the model in ``checkpoint_dir`` (a local folder) as a bundle with its provenance."""
    from safetensors.torch import load_file

    from strokeray.learn.bundle import save_bundle
    from strokeray.learn.models import build_model

    model = build_model(replace(cfg.model, weights=None))
    model.load_state_dict(load_file(os.path.join(checkpoint_dir, "model.safetensors")))
    pre = card["config"]["records"]["preprocess"]
    view = "classification" if cfg.task == "classify" else "segmentation"
    save_bundle(bundle_dir, model, cfg.model, {
        "task": cfg.task,
        "input_size": cfg.input_size or pre[view]["size"],
        "windows": pre["windows"],
        "class_names": ["non-stroke", "stroke"] if cfg.task == "classify" else ["background", "ischemic", "hemorrhagic"],
        "preprocess": pre,
        "score_metric": cfg.score_name(),
        # the classifier's decision threshold, chosen on the validation split (Youden's J)
        **({"threshold": float(metrics.get("val_threshold", 0.5))} if cfg.task == "classify" else {}),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "history": history,
        "train": json.loads(json.dumps(asdict(cfg), default=str)),
        "dataset_card": {k: card[k] for k in ("schema_version", "source", "slices", "patients", "config_digest", "per_split")},
    })
    return bundle_dir


def run_train(shards: str, out: str, cfg: TrainConfig, name: str | None = None, log=print) -> TrainResult:
    """Train on ``shards`` (an ingest OUT); checkpoints under ``out/<name>``, bundle ``out/<name>/bundle``."""
    from strokeray.stages.runtime import ensure_ray

    read_card(shards)  # a missing or unfinished ingest fails here, before Ray starts
    ensure_ray()
    run = prepare_run(shards, out, cfg, name)
    result = run.trainer.fit()
    if result.error:
        raise result.error
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_score", -1.0))
    with result.checkpoint.as_directory() as d:  # the latest holds the whole history
        history = json.loads(open(os.path.join(d, "state.json")).read())["history"]
    bundle_dir = f"{run.storage.rstrip('/')}/{run.name}/bundle"
    with best_ckpt.as_directory() as d:
        export_bundle(d, bundle_dir, run.cfg, run.card, dict(best_metrics), history)
    score = run.cfg.score_name()
    log(f"[train] {cfg.task} {run.cfg.model.backbone}: best {score}={best_metrics.get(score)}"
        f" at epoch {best_metrics.get('epoch')} -> {bundle_dir}")
    return TrainResult(out=f"{run.storage}/{run.name}", bundle=bundle_dir, best_checkpoint=best_ckpt.path,
                       best_metrics=dict(best_metrics), history=history)
