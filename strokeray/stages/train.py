"""Train the classifier or the segmenter with Ray Train (TorchTrainer, DDP) on ingest shards.

One loop serves both tasks; what differs (columns, loss, metrics) comes from ``TaskSpec``.
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


@dataclass
class TaskSpec:
    image: str
    score_name: str  # the validation metric that picks the best checkpoint
    columns: tuple[str, ...]


TASKS = {
    "classify": TaskSpec("cls_image", "val_accuracy", ("cls_image", "label", "patient", "split")),
    "segment": TaskSpec("seg_image", "val_mean_lesion_iou", ("seg_image", "seg_mask", "has_mask", "lesion", "split")),
}


def split_rows(table, split: str, task: str):
    """The rows of a shard table that belong to ``split`` and carry a truth for ``task``."""
    keep = pc.equal(table["split"], split)
    if task == "classify":
        keep = pc.and_(keep, pc.greater_equal(table["label"], 0))
    else:  # annotated slices, and slices known to hold no lesion (an all-background truth)
        keep = pc.and_(keep, pc.or_(table["has_mask"], pc.equal(table["lesion"], 0)))
    return table.filter(keep)


def datasets_for(shards: str, task: str):
    """Ray datasets of the train and val splits, reading only the columns the task needs."""
    import ray

    spec = TASKS[task]
    base = ray.data.read_parquet(shards.rstrip("/") + "/shards", columns=list(spec.columns))
    return {
        split: base.map_batches(split_rows, batch_format="pyarrow", fn_kwargs={"split": split, "task": task})
        for split in ("train", "val")
    }


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
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file

    from strokeray.learn.augment import augment_batch
    from strokeray.learn.losses import segmentation_loss
    from strokeray.learn.metrics import SegmentationMeter, binary_report, patient_level
    from strokeray.learn.models import build_model

    cfg: TrainConfig = config["cfg"]
    weights = config.get("class_weights")
    spec = TASKS[cfg.task]
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
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    cw = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)

    def to_device(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if device.type == "cuda":
            t = t.pin_memory()
        return t.to(device, non_blocking=True)

    def inputs(batch):
        x = to_device(batch[spec.image]).float() / 255.0
        y = to_device(batch["label"] if cfg.task == "classify" else batch["seg_mask"]).long()
        if cfg.input_size and x.shape[-1] != cfg.input_size:
            x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False)
            if cfg.task == "segment":
                y = F.interpolate(y[:, None].float(), size=(cfg.input_size,) * 2, mode="nearest")[:, 0].long()
        return x, y

    def loss_of(logits, y):
        if cfg.task == "classify":
            return F.cross_entropy(logits.float(), y, weight=cw)
        return segmentation_loss(logits, y, cfg.seg_loss)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        total, seen = 0.0, 0
        # numpy batches: the patient key is a string column, which torch batches cannot carry.
        for batch in train_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                              local_shuffle_buffer_size=256, local_shuffle_seed=cfg.seed + epoch):
            x, y = inputs(batch)
            x, aug_y = augment_batch(x, y if cfg.task == "segment" else None, cfg.augment, gen)
            if cfg.task == "segment":
                y = aug_y
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_of(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(x)
            seen += len(x)
        model.eval()
        val_loss, val_seen, outputs = 0.0, 0, []
        meter = SegmentationMeter(3)
        with torch.no_grad():
            for batch in val_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"):
                x, y = inputs(batch)
                with torch.autocast(device.type, enabled=use_amp):
                    logits = model(x)
                val_loss += float(loss_of(logits, y)) * len(x)
                val_seen += len(x)
                if cfg.task == "classify":
                    prob = logits.float().softmax(1)[:, 1].cpu().numpy()
                    outputs.append((prob, y.cpu().numpy(), np.asarray(batch["patient"])))
                else:
                    meter.update(logits.argmax(1).cpu().numpy(), y.cpu().numpy())
        local = {"train": (total, seen), "val": (val_loss, val_seen), "outputs": outputs, "meter": meter}
        gathered = [None] * world
        if world > 1:
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        metrics = {"epoch": epoch + 1,
                   "started_at_epoch": start_epoch,  # > 0 after a resume from a checkpoint
                   "train_loss": sum(g["train"][0] for g in gathered) / max(1, sum(g["train"][1] for g in gathered)),
                   "val_loss": sum(g["val"][0] for g in gathered) / max(1, sum(g["val"][1] for g in gathered))}
        if cfg.task == "classify":
            outs = [o for g in gathered for o in g["outputs"]]
            if outs:
                prob = np.concatenate([o[0] for o in outs])
                lab = np.concatenate([o[1] for o in outs])
                pat = np.concatenate([o[2] for o in outs])
                metrics.update(binary_report(lab, prob).as_dict("val_"))
                plab, pprob = patient_level(pat, lab, prob)
                metrics.update(binary_report(plab, pprob).as_dict("val_patient_"))
        else:
            total_meter = SegmentationMeter(3)
            for g in gathered:
                total_meter.merge(g["meter"])
            metrics.update({f"val_{k}": v for k, v in total_meter.report().items()})
        score = metrics.get(spec.score_name, float("nan"))
        metrics["val_score"] = -1.0 if score != score else float(score)  # NaN never wins
        best = max(best, metrics["val_score"])
        history.append({k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()})
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


def run_train(shards: str, out: str, cfg: TrainConfig, name: str | None = None, log=print) -> TrainResult:
    """Train on ``shards`` (an ingest OUT); checkpoints under ``out/<name>``, bundle ``out/<name>/bundle``."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from strokeray.learn.bundle import save_bundle
    from strokeray.learn.models import build_model
    from strokeray.stages.runtime import ensure_ray

    if cfg.task not in TASKS:
        raise ValueError(f"task must be classify or segment, got {cfg.task!r}")
    model_cfg = replace(cfg.model, task=cfg.task, num_classes=2 if cfg.task == "classify" else 3)
    fs, card_path = fsspec.core.url_to_fs(f"{shards.rstrip('/')}/card.json")
    with fs.open(card_path, "r") as fh:
        card = json.load(fh)
    windows = card["config"]["records"]["preprocess"]["windows"]
    model_cfg = replace(model_cfg, in_channels=len(windows))
    cfg = replace(cfg, model=model_cfg)
    name = name or f"{cfg.task}-{model_cfg.backbone}"
    ensure_ray()
    weights = class_weights(shards) if cfg.task == "classify" and cfg.balance_classes else None
    storage = os.path.abspath(out) if "://" not in out else out
    cpus = cfg.cpus_per_worker
    if cpus is None:
        total = float(ray.cluster_resources().get("CPU", 1))
        cpus = 1.0 if cfg.use_gpu else max(0.1, min(1.0, (total - 1.0) / cfg.num_workers))
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
        ),
        datasets=datasets_for(shards, cfg.task),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_score", -1.0))
    with best_ckpt.as_directory() as d:
        from safetensors.torch import load_file

        model = build_model(replace(model_cfg, weights=None))
        model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
    with result.checkpoint.as_directory() as d:  # the latest holds the whole history
        state = json.loads(open(os.path.join(d, "state.json")).read())
    view = "classification" if cfg.task == "classify" else "segmentation"
    size = cfg.input_size or card["config"]["records"]["preprocess"][view]["size"]
    bundle_dir = f"{storage.rstrip('/')}/{name}/bundle"
    save_bundle(bundle_dir, model, model_cfg, {
        "task": cfg.task,
        "input_size": size,
        "windows": windows,
        "class_names": ["non-stroke", "stroke"] if cfg.task == "classify" else ["background", "ischemic", "hemorrhagic"],
        "preprocess": card["config"]["records"]["preprocess"],
        "metrics": {k: v for k, v in best_metrics.items() if isinstance(v, (int, float))},
        "history": state["history"],
        "train": json.loads(json.dumps(asdict(cfg), default=str)),
        "dataset_card": {k: card[k] for k in ("schema_version", "source", "slices", "patients", "config_digest", "per_split")},
    })
    log(f"[train] {cfg.task} {model_cfg.backbone}: best {TASKS[cfg.task].score_name}={best_metrics.get(TASKS[cfg.task].score_name)}"
        f" at epoch {best_metrics.get('epoch')} -> {bundle_dir}")
    return TrainResult(out=f"{storage}/{name}", bundle=bundle_dir, best_checkpoint=best_ckpt.path,
                       best_metrics=dict(best_metrics), history=state["history"])
