"""Train the classifier or the segmenter with Ray Train (TorchTrainer, DDP) on ingest shards.

One loop serves every task; what differs (columns, loss, meters, bundle fields) comes from the
``learn.tasks.Task``, the steps (inputs, augmentation, AMP) from ``learn.steps.TaskSteps``, which the
benchmark's plain loop shares. The loop is a few helpers, as torchvision's reference scripts:
``restore``, ``train_one_epoch``, ``recalibrate_bn``, ``evaluate``, ``epoch_metrics``, ``save_checkpoint``.
Each epoch reports metrics and, from rank 0, a checkpoint (safetensors weights, optimizer state,
history). Ray keeps the best two by validation score plus the latest; a dead worker restarts the
group from the latest checkpoint (FailureConfig); running again with the same ``--out`` and
``--name`` resumes. The best checkpoint is exported as a model bundle.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from strokeray.checks import check_choice, check_positive, check_range
from strokeray.datasets.shard_set import ShardSet, apply_splits
from strokeray.datasets.slice_context import ORDER_COLUMNS, with_context
from strokeray.learn.augment import AugmentConfig
from strokeray.learn.losses import SegLossConfig
from strokeray.learn.models import ModelConfig
from strokeray.learn.steps import lr_factor
from strokeray.learn.tasks import CLASSIFY, Task, get_task
from strokeray.stages.runtime import with_tensors

TIE_BREAK = 1e-6  # val_score per unit of validation loss (see TrainConfig.score_of)
OBJECTIVES = ("slice", "patient")


@dataclass(frozen=True)
class TrainConfig:
    task: str = CLASSIFY.name  # a learn.tasks.TASKS name; the model's task and classes follow it
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    schedule: str = "constant"  # learning rate per epoch: constant, or cosine after one warm-up epoch
    # What the classifier's loss judges: each slice by its label, or each patient by the top quarter
    # of its slices (learn.bags: multiple-instance learning, for labels given per patient). With
    # "patient", batch_size counts patients and each step draws at most bag_slices of a patient's slices.
    objective: str = "slice"
    bag_slices: int = 16
    # 2.5-D input (classifier): each slice with this many neighbours a side of its series as extra
    # channels (datasets.slice_context); 0: the slice alone
    context_slices: int = 0
    input_size: int | None = None  # resize the views (None: as ingested, 224 / 256)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seg_loss: SegLossConfig = field(default_factory=SegLossConfig)
    balance_classes: bool = True  # inverse-frequency class weights in the classifier's loss
    num_workers: int = 2  # one per GPU on a GPU cluster
    use_gpu: bool = False
    gpus_per_worker: float = 1.0  # with use_gpu; under 1 (one worker only) shares a GPU with other runs
    # CPUs each worker reserves; None: 1 with GPUs, else a share that leaves one CPU to the Ray
    # Data tasks feeding the workers (reserve every CPU for training and the data never comes).
    cpus_per_worker: float | None = None
    max_failures: int = 2
    seed: int = 0
    # The same run twice gives the same weights: every worker reads the splits in one fixed order
    # (sorted by id) and takes its rows of each global batch, instead of Ray Data dealing blocks to
    # whichever worker asks first; torch's deterministic algorithms on. Costs each worker a read of
    # the whole split (see ordered_batches).
    deterministic: bool = False
    # The validation metric that picks the best checkpoint (None: the task's, ``Task.score_metric``). Losses
    # (names ending in "loss") are minimised: ``val_score`` is then the negated loss.
    score_metric: str | None = None
    # Batches of un-augmented training data that re-estimate BatchNorm statistics before each
    # validation (learn.steps.TaskSteps.recalibrate_bn; 0: keep the running averages).
    bn_recalibration_batches: int = 50
    # Read the shards once into Ray's object store rather than every epoch (None: when they fit
    # in a quarter of it; see datasets_for).
    cache_data: bool | None = None

    def __post_init__(self) -> None:
        task = get_task(self.task)  # a clear error for an unknown name
        object.__setattr__(self, "model", replace(self.model, task=task.name, num_classes=task.num_classes))
        check_choice("objective", self.objective, OBJECTIVES)
        if self.objective == "patient" and task.dense:
            raise ValueError(f"the patient objective is the classifier's; {task.name} learns per pixel")
        check_range("context_slices", self.context_slices, 0, 8)
        if self.context_slices and (task.dense or self.objective == "patient"):
            raise ValueError("2.5-D input (context_slices) is built for the classifier's slice objective")
        check_positive(
            epochs=self.epochs,
            batch_size=self.batch_size,
            bag_slices=self.bag_slices,
            lr=self.lr,
            num_workers=self.num_workers,
            cpus_per_worker=self.cpus_per_worker,
        )
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        lr_factor(self.schedule, 0, self.epochs)  # a clear error for an unknown schedule
        check_range("input_size", self.input_size, 32, 4096)
        check_range("gpus_per_worker", self.gpus_per_worker, 0.01, 64)
        if self.gpus_per_worker < 1 and self.num_workers > 1:
            raise ValueError("a fraction of a GPU per worker needs num_workers=1: DDP ranks cannot share a GPU")
        check_range("max_failures", self.max_failures, 0, 100)
        check_range("bn_recalibration_batches", self.bn_recalibration_batches, 0, 1e9)

    def slices_per_step(self) -> int:
        """Slices a training step sees at most (``batch_size`` counts patients for the patient objective)."""
        return self.batch_size * (self.bag_slices if self.objective == "patient" else 1)

    def score_name(self) -> str:
        return self.score_metric or get_task(self.task).score_metric

    def score_of(self, metrics: dict) -> float:
        """``val_score``: the score metric, higher is better, NaN or missing as -inf's stand-in.

        A metric that saturates (accuracy 1.0 on a validation split of 18 slices, reached at
        several epochs) would tie, and a tie went to the first, least trained epoch: ties go to
        the lower validation loss instead, by a term (at most 1e-5) too small to reorder any real
        difference of a score measured on fewer than 100,000 slices."""
        value = metrics.get(self.score_name(), float("nan"))
        if value is None or value != value:
            return -1e9 if self.score_name().endswith("loss") else -1.0  # never the best
        if self.score_name().endswith("loss"):
            return -float(value)
        loss = metrics.get("val_loss")
        tie_break = TIE_BREAK * min(float(loss), 10.0) if loss is not None and loss == loss else 0.0
        return float(value) - tie_break


# CPUs a data task (read a shard, keep a split) reserves. The work is light next to training, and
# a whole CPU per task can leave the data unschedulable once training workers and concurrent Tune
# trials hold most of the CPUs (a silent hang).
DATA_TASK_CPUS = 0.25


def _keep_split(table, split: str, task: str, splits: dict[str, str] | None = None):
    return get_task(task).rows(apply_splits(with_tensors(table), splits), split)


def datasets_for(
    shards: ShardSet,
    task: Task,
    cache: bool | None = None,
    bags: bool = False,
    context: int = 0,
    ordered: bool = False,
    seed: int | None = None,
):
    """Ray datasets of the train and val splits, reading only the columns the task needs.

    ``cache``: read once into Ray's object store instead of re-reading the shards every epoch
    (None: when the task's columns take under a quarter of the object store); a cached train
    split is mixed (``mixed_blocks``; ``seed`` fixes its sequence of block orders). ``bags``: the
    train split as one row per patient (``learn.bags.make_bag``), grouped once and always cached.
    ``context``: 2.5-D views, ``context`` neighbours a side (``datasets.slice_context``), grouped
    by patient once and always cached. ``ordered``: each split cached with its blocks in the order
    of the shards' files, a patient's rows in id order (``TrainConfig.deterministic``).
    """
    import ray

    wanted = list(dict.fromkeys([*task.columns, *(ORDER_COLUMNS if context else ()), *(("id",) if ordered else ())]))
    columns = shards.read_columns(wanted)
    # one pass over the footers, for the cache decision and the mixing block size (mixing needs the cache)
    nbytes = shards.column_bytes(columns) if cache is not False else 0
    if cache is None:
        cache = nbytes < 0.25 * ray.cluster_resources().get("object_store_memory", 0)
    mix = cache and not (ordered or bags or context)
    out = {}
    for split in ("train", "val"):
        # each split its own read: datasets made from one share its context (block size, order)
        ds = ray.data.read_parquet(shards.files(), num_cpus=DATA_TASK_CPUS).select_columns(columns)
        if ordered:
            # blocks in the order of their files when materialised, a grouping's in the order of
            # its partitions (by default Ray Data hands blocks on as tasks finish)
            ds.context.execution_options.preserve_order = True
        if mix and split == "train":
            ds.context.target_max_block_size = mix_block_bytes(nbytes, shards.num_rows())
        # a partial, not fn_kwargs: seen lost (Ray 2.60) when the read is a list of s3:// files
        ds = ds.map_batches(
            functools.partial(_keep_split, split=split, task=task.name, splits=shards.splits),
            batch_format="pyarrow",
            num_cpus=DATA_TASK_CPUS,
        )
        if bags and split == "train":
            from strokeray.learn.bags import make_bag

            # the grouping is a shuffle: once, not every epoch
            bag = functools.partial(make_bag, image_column=task.image_column)
            out[split] = per_patient(ds, functools.partial(in_id_order, fn=bag) if ordered else bag).materialize()
        elif context:
            stack = functools.partial(with_context, image_column=task.image_column, k=context)
            grouped = per_patient(ds, functools.partial(in_id_order, fn=stack) if ordered else stack)
            out[split] = grouped.select_columns(list(task.columns)).materialize()
        elif mix and split == "train":
            out[split] = mixed_blocks(ds.materialize(), seed=seed)
        else:
            out[split] = ds.materialize() if cache or ordered else ds
    return out


# Rows a cached training block holds. Ray Train deals a dataset's blocks to its workers, and each
# worker shuffles only within a 256-row buffer; cached as read, CT-ICH's training split was 3 blocks
# in shard order, one worker's rows 23 % positive and the other's 67 %, the same every epoch (each
# worker's batch norm then learns its own class mix). In blocks of 16 drawn in a new random order
# every epoch, each worker's buffer holds 16 blocks from anywhere in the split. The read makes the
# small blocks itself (its target block size): blocks a repartition made were not rebuilt after a
# node holding them was lost, and training in the node-failure test never resumed.
MIX_BLOCK_ROWS = 16


def mix_block_bytes(nbytes: int, num_rows: int, rows: int = MIX_BLOCK_ROWS) -> int:
    """A target block size (bytes) that makes Ray Data's reads and maps emit blocks of about
    ``rows`` rows, for data of ``nbytes`` over ``num_rows`` rows."""
    return max(1, int(nbytes / max(1, num_rows) * rows))


def mixed_blocks(ds, seed: int | None = None):
    """``ds`` (materialised) read in a new random block order on every execution (every epoch; the
    sequence of orders follows from ``seed``): with small blocks, no worker's stream keeps the
    storage order, without a shuffle of the rows."""
    from ray.data import RandomSeedConfig

    order = None if seed is None else RandomSeedConfig(seed=seed, reseed_after_execution=True)
    return ds.randomize_block_order(seed=order)


def in_id_order(group: dict[str, np.ndarray], fn):
    """``fn`` over a patient's rows (numpy columns) sorted by slice id: a Ray Data grouping keeps
    no order within a group."""
    order = np.argsort(group["id"], kind="stable")
    return fn({k: np.asarray(v)[order] for k, v in group.items()})


def per_patient(ds, fn):
    """``fn`` over each patient's rows (numpy columns), a Ray Data hash shuffle by patient.

    Into a few partitions per CPU rather than Ray's default 200: on CT-ICH (2,501 slices, 82
    patients) the 2.5-D grouping took 92 s with the default and 52-63 s with 8 partitions here."""
    import ray

    partitions = max(8, 2 * int(ray.cluster_resources().get("CPU", 1)))
    return ds.groupby("patient", num_partitions=partitions).map_groups(
        fn, batch_format="numpy", num_cpus=DATA_TASK_CPUS
    )


def class_weights(shards: ShardSet, per_patient: bool = False) -> list[float]:
    """Inverse-frequency weights of labels 0/1 in the training split (of its slices, or of its
    patients for the patient objective)."""
    counts = shards.patient_label_counts("train") if per_patient else shards.label_counts("train")
    counts = np.maximum(counts, 1)
    return list(counts.sum() / (2 * counts))


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@dataclass
class LoopState:
    """What a checkpoint carries besides the weights: where to go on from."""

    start_epoch: int = 0
    best: float = -math.inf
    history: list = field(default_factory=list)
    streams: dict = field(default_factory=dict)  # every rank's random streams (learn.random_streams)


def restore(model, checkpoint) -> tuple[LoopState, dict | None, dict | None]:
    """Load a Ray Train checkpoint into ``model``: (loop state, optimizer state, AMP scaler state).

    Everything is read onto the CPU: a GPU run's checkpoint resumes anywhere, and each rank's
    optimizer moves its state to its own device on loading (not all to the saving rank's GPU).
    """
    import torch
    from safetensors.torch import load_file

    if not checkpoint:
        return LoopState(), None, None
    with checkpoint.as_directory() as d:
        model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
        optimizer_state = torch.load(os.path.join(d, "optimizer.pt"), map_location="cpu", weights_only=True)
        state = json.loads(open(os.path.join(d, "state.json")).read())
        streams_file = os.path.join(d, STREAMS_FILE)  # absent from checkpoints written before it was saved
        streams = load_file(streams_file) if os.path.isfile(streams_file) else {}
    loop = LoopState(state["epoch"], state["best"], state["history"], streams)
    return loop, optimizer_state, state.get("scaler")


CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt")
STREAMS_FILE = "random_streams.safetensors"


def write_checkpoint(folder: str, model, optimizer, scaler, state: LoopState, epoch: int) -> None:
    """A checkpoint's files in ``folder``: safetensors weights, optimizer state, every rank's random
    streams (safetensors), loop and AMP scaler state."""
    import torch
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()},
        os.path.join(folder, "model.safetensors"),
    )
    torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
    files = list(CHECKPOINT_FILES)
    if state.streams:
        save_file(state.streams, os.path.join(folder, STREAMS_FILE))
        files.append(STREAMS_FILE)
    # the scaler's loss scale and growth tracker: without them a resumed AMP run starts again at
    # 2**16 and skips steps until the scale has come down. The sizes of the other files: a copy to
    # storage cut off by a lost node can leave a full state.json beside a truncated model.
    sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in files}
    doc = {"epoch": epoch, "best": state.best, "history": state.history, "scaler": scaler.state_dict(), "sizes": sizes}
    with open(os.path.join(folder, "state.json"), "w") as fh:
        json.dump(doc, fh)


def checkpoint_complete(fs, folder: str, state: dict) -> bool:
    """Whether every file a checkpoint's ``state`` (its state.json) lists is in ``folder`` at its
    size (checkpoints written before the sizes were recorded: whether the weights are there)."""
    sizes = state.get("sizes") or {"model.safetensors": None}
    for name, size in sizes.items():
        path = f"{folder.rstrip('/')}/{name}"
        if not fs.exists(path) or (size is not None and fs.size(path) != size):
            return False
    return True


@dataclass(frozen=True)
class Feed:
    """How a worker reads its numpy batches (the patient key is a string column, which torch
    batches cannot carry): from the shard Ray Data streamed it, or, ``ordered``, as its rows of
    each global batch of the whole split, shuffled by a seeded permutation (a DistributedSampler's
    deal), so that which rows a step sees does not depend on which worker asked Ray Data first.

    Ordered, each worker holds the whole split in memory (read once, in the dataset's fixed order):
    a local shuffle buffer cannot mix a split stored class by class (CT-ICH's training rows come in
    runs of 300-700 of one label), and a permutation of rows read from the store would re-read it."""

    rank: int = 0
    world: int = 1
    ordered: bool = False
    held: dict = field(default_factory=dict, compare=False)  # ordered: each split's columns, by shard

    def batches(self, shard, batch_size: int, shuffle_buffer: int = 0, seed: int | None = None):
        if not self.ordered:
            shuffle = (
                {"local_shuffle_buffer_size": shuffle_buffer, "local_shuffle_seed": seed} if shuffle_buffer else {}
            )
            yield from shard.iter_batches(batch_size=batch_size, batch_format="numpy", **shuffle)
            return
        rows = self.rows(shard)
        n = len(next(iter(rows.values()))) if rows else 0
        order = np.random.default_rng(seed).permutation(n) if shuffle_buffer else np.arange(n)
        step = batch_size * self.world  # every rank draws the same global batches and keeps its rows
        for start in range(0, n, step):
            index = order[start : start + step]
            if len(index) < self.world:
                return  # a last batch too small for every rank (Ray's equal split drops such rows too)
            mine = index[self.rank :: self.world]
            yield {k: v[mine] for k, v in rows.items()}

    def rows(self, shard) -> dict[str, np.ndarray]:
        """The whole split's columns, read once."""
        key = id(shard)
        if key not in self.held:
            parts = list(shard.iter_batches(batch_size=1024, batch_format="numpy"))
            self.held[key] = {k: concat_rows([p[k] for p in parts]) for k in (parts[0] if parts else {})}
        return self.held[key]


def concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    """Batches of one column as one array; rows of differing shapes (bags of different sizes) as
    an object array of rows, as Ray Data gives them."""
    try:
        return np.concatenate(parts)
    except ValueError:
        out = np.empty(sum(len(p) for p in parts), dtype=object)
        for i, row in enumerate(row for p in parts for row in p):
            out[i] = row  # one at a time: a list of equal arrays would be read as one array
        return out


def train_one_epoch(model, optimizer, steps, shard, cfg: TrainConfig, epoch: int, feed: Feed = Feed()) -> dict:
    """One pass over this worker's training shard: summed loss, images, seconds and the fit meter
    (loss and meter stay on the device until the pass ends: one host read-back an epoch)."""
    import time

    model.train()
    total, seen, images, fit = 0.0, 0, 0, steps.task.fit_meter()
    bags = cfg.objective == "patient"
    began = time.perf_counter()
    # a bag row holds a whole patient: a smaller shuffle buffer (ordered: any nonzero size shuffles all)
    for batch in feed.batches(shard, cfg.batch_size, shuffle_buffer=32 if bags else 256, seed=cfg.seed + epoch):
        if bags:
            loss_sum, n, n_images = steps.bag_step(model, optimizer, batch, fit, cfg.bag_slices)
        else:
            loss_sum, n = steps.train_step(model, optimizer, batch, fit)
            n_images = n
        total = total + loss_sum
        seen += n
        images += n_images
    host_fit = fit.host()  # reads the device's counts: the pass is done when this returns
    return {
        # (summed loss, what it is summed over: slices or patients, seconds, images)
        "train": (float(total), seen, time.perf_counter() - began, images),
        "fit": host_fit,
        "gpu_mb": peak_gpu_mb(steps.device),
    }


def peak_gpu_mb(device) -> float:
    """Peak GPU memory this process allocated on ``device`` so far, MiB (0 off CUDA)."""
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def recalibrate_bn(model, steps, shard, cfg: TrainConfig, world: int, feed: Feed = Feed()) -> None:
    """Precise BN on this worker's un-augmented batches, then averaged so all ranks validate one model."""
    import itertools

    import torch
    import torch.distributed as dist

    from strokeray.learn.steps import bn_buffers

    bare = _unwrap(model)  # not through DDP, which would broadcast rank 0's buffers every forward
    batches = feed.batches(shard, cfg.batch_size)
    if cfg.objective == "patient":
        from strokeray.learn.bags import flatten_bags

        batches = (flatten_bags(b, steps.task.image_column) for b in batches)
    steps.recalibrate_bn(bare, itertools.islice(batches, cfg.bn_recalibration_batches))
    if world > 1:
        for m in bare.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for buf in bn_buffers(m)[:2]:  # running mean and variance
                    dist.all_reduce(buf)
                    buf /= world


def evaluate(model, steps, shard, cfg: TrainConfig, feed: Feed = Feed()) -> dict:
    """This worker's validation: summed loss, slices and the task's validation meter."""
    model.eval()
    loss, seen, meter = 0.0, 0, steps.task.val_meter()
    for batch in feed.batches(shard, cfg.slices_per_step()):
        logits, y, loss_sum = steps.eval_step(model, batch)
        loss += loss_sum
        seen += len(y)
        meter.update(steps.task.outputs(logits), y.cpu().numpy(), batch)
    return {"val": (loss, seen), "meter": meter}


def gather(local: dict, world: int) -> list[dict]:
    """Every rank's ``local`` on every rank."""
    import torch.distributed as dist

    if world == 1:
        return [local]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, local)
    return gathered


def epoch_metrics(gathered: list[dict], cfg: TrainConfig, epoch: int, start_epoch: int) -> dict:
    """One epoch's metrics over all workers."""
    import torch

    train_seen = sum(g["train"][1] for g in gathered)
    train_images = sum(g["train"][3] for g in gathered)
    fit, meter = gathered[0]["fit"], gathered[0]["meter"]
    for g in gathered[1:]:
        fit.merge(g["fit"])
        meter.merge(g["meter"])
    metrics = {
        "epoch": epoch + 1,
        "started_at_epoch": start_epoch,  # > 0 after a resume from a checkpoint
        "train_loss": sum(g["train"][0] for g in gathered) / max(1, train_seen),
        "val_loss": sum(g["val"][0] for g in gathered) / max(1, sum(g["val"][1] for g in gathered)),
        # the training pass alone (data feeding included; validation and checkpoint not)
        "train_images": train_images,
        "train_images_per_s": train_images / max(1e-9, max(g["train"][2] for g in gathered)),
        "torch_threads": torch.get_num_threads(),
        **fit.report(),
        **meter.report(),
    }
    if cfg.objective == "patient":
        metrics["train_patients"] = train_seen  # what train_loss and train_accuracy are over
    if any(g.get("gpu_mb") for g in gathered):
        metrics["gpu_peak_memory_mb"] = max(g.get("gpu_mb", 0.0) for g in gathered)
    metrics["val_score"] = cfg.score_of(metrics)
    return metrics


def save_checkpoint(model, optimizer, scaler, state: LoopState, metrics: dict, rank: int) -> None:
    """Report ``metrics`` with, from rank 0, a checkpoint (``write_checkpoint``)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            write_checkpoint(tmp, model, optimizer, scaler, state, metrics["epoch"])
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def train_loop(config: dict) -> None:
    """The per-worker loop run by Ray Train."""
    import ray.train
    import ray.train.torch
    import torch

    from strokeray.learn import random_streams
    from strokeray.learn.accel import for_device
    from strokeray.learn.models import build_model, freeze_unused
    from strokeray.learn.steps import TaskSteps

    cfg: TrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    feed = Feed(rank, world, ordered=cfg.deterministic)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    model = build_model(cfg.model)
    state, optimizer_state, scaler_state = restore(model, ray.train.get_checkpoint())
    unused = freeze_unused(model, cfg.model.in_channels)  # else DDP fails on their missing gradients
    if unused and rank == 0:
        print(f"[train] {len(unused)} parameters no forward pass reaches are frozen: {', '.join(unused)}", flush=True)
    model = ray.train.torch.prepare_model(for_device(model, ray.train.torch.get_device()))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    steps = TaskSteps(
        get_task(cfg.task),
        ray.train.torch.get_device(),
        cfg.input_size,
        cfg.augment,
        cfg.seg_loss,
        config.get("class_weights"),
        seed=cfg.seed * 1000 + rank,
    )
    if scaler_state:
        steps.scaler.load_state_dict(scaler_state)
    # Resumed: go on drawing flips and dropout where the checkpoint left off, as the uninterrupted run does.
    resumed = random_streams.restore(state.streams, rank, world, steps.generator, steps.device)
    if state.streams and not resumed and rank == 0:
        print(
            f"[train] the checkpoint's random streams are {random_streams.ranks_saved(state.streams)} workers', "
            f"this run has {world}: they start afresh",
            flush=True,
        )
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    for epoch in range(state.start_epoch, cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg.schedule, epoch, cfg.epochs)
        local = train_one_epoch(model, optimizer, steps, train_shard, cfg, epoch, feed)
        if cfg.bn_recalibration_batches:
            recalibrate_bn(model, steps, train_shard, cfg, world, feed)
        local.update(evaluate(model, steps, val_shard, cfg, feed))
        local["streams"] = random_streams.capture(steps.generator, steps.device)  # after the epoch's last draw
        gathered = gather(local, world)
        metrics = epoch_metrics(gathered, cfg, epoch, state.start_epoch)
        state.streams = random_streams.by_rank([g["streams"] for g in gathered])
        state.best = max(state.best, metrics["val_score"])
        state.history.append({k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()})
        if rank == 0:
            print(
                f"[train] epoch {epoch + 1}/{cfg.epochs}: train_loss={metrics['train_loss']:.4f} "
                f"val_loss={metrics['val_loss']:.4f} {cfg.score_name()}="
                f"{metrics.get(cfg.score_name(), float('nan')):.4f} ({metrics['train_images_per_s']:.1f} images/s)",
                flush=True,
            )
        save_checkpoint(model, optimizer, steps.scaler, state, metrics, rank)


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

    trainer: Any  # ray.train.torch.TorchTrainer
    cfg: TrainConfig  # with the model's channels and classes filled in from the shards
    shards: ShardSet
    storage: str
    name: str


def with_model_shape(cfg: TrainConfig, shards: ShardSet) -> TrainConfig:
    """``cfg`` with the model's input channels (the shards' HU windows) and a local weights file's
    absolute path (the workers that load it run in other folders)."""
    weights = cfg.model.weights
    if weights and weights.endswith(".safetensors") and "://" not in weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"--weights {weights}: no such file")
        weights = os.path.abspath(weights)
    channels = len(shards.preprocess.windows) * (2 * cfg.context_slices + 1)
    return replace(cfg, model=replace(cfg.model, in_channels=channels, weights=weights))


def data_config(ordered: bool):
    """How Ray Train hands the datasets to the workers: Ray Data's streaming split (each block to
    the worker that asks), or, ``ordered``, every worker the whole split in order (``Feed``)."""
    import ray.train

    if not ordered:
        return ray.train.DataConfig()
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=[], execution_options=options)


def cpus_per_worker(cfg: TrainConfig) -> float:
    """The CPUs each worker reserves: see ``TrainConfig.cpus_per_worker``."""
    import ray

    if cfg.cpus_per_worker is not None:
        return cfg.cpus_per_worker
    if cfg.use_gpu:
        return 1.0
    total = float(ray.cluster_resources().get("CPU", 1))
    return max(0.1, min(1.0, (total - 1.0) / cfg.num_workers))


def prepare_run(
    shards: ShardSet, out: str, cfg: TrainConfig, name: str | None = None, callbacks=(), datasets: dict | None = None
) -> PreparedRun:
    """A TorchTrainer for ``cfg`` on ``shards``, storing under ``out/<name>`` (Ray must be up);
    ``datasets``: the train and val datasets of ``shards`` already made (``datasets_for``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    task = get_task(cfg.task)
    cfg = with_model_shape(cfg, shards)
    name = name or f"{task.name}-{cfg.model.backbone}"
    patients = cfg.objective == "patient"
    weights = class_weights(shards, per_patient=patients) if task.num_classes == 2 and cfg.balance_classes else None
    storage = os.path.abspath(out) if "://" not in out else out
    cpus = cpus_per_worker(cfg)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg, "class_weights": weights},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_score", checkpoint_score_order="max"
            ),
            callbacks=list(callbacks),
        ),
        datasets=datasets
        if datasets is not None
        else datasets_for(
            shards,
            task,
            cfg.cache_data,
            bags=patients,
            context=cfg.context_slices,
            ordered=cfg.deterministic,
            seed=cfg.seed,
        ),
        dataset_config=data_config(cfg.deterministic),
    )
    return PreparedRun(trainer=trainer, cfg=cfg, shards=shards, storage=storage, name=name)


def export_bundle(
    checkpoint_dir: str, bundle_dir: str, cfg: TrainConfig, shards: ShardSet, metrics: dict, history: list[dict]
) -> str:
    """Write the model in ``checkpoint_dir`` (a local folder) as a bundle with its provenance."""
    from safetensors.torch import load_file

    from strokeray.learn.accel import precision_name
    from strokeray.learn.bundle import save_bundle
    from strokeray.learn.models import build_model

    task = get_task(cfg.task)
    model = build_model(replace(cfg.model, weights=None))
    model.load_state_dict(load_file(os.path.join(checkpoint_dir, "model.safetensors")))
    pre = shards.preprocess_dict
    save_bundle(
        bundle_dir,
        model,
        cfg.model,
        {
            "task": task.name,
            "input_size": cfg.input_size or shards.view_size(task.view),
            "windows": pre["windows"],
            # 2.5-D: neighbours a side stacked as channels (datasets.slice_context); 0 for one slice
            "context_slices": cfg.context_slices,
            "class_names": list(task.class_names),
            "preprocess": pre,
            "score_metric": cfg.score_name(),
            # what validation, and so the operating point, ran in (fp16 autocast on GPUs)
            "precision": precision_name("cuda" if cfg.use_gpu else "cpu"),
            **task.bundle_fields(metrics),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "history": history,
            "train": json.loads(json.dumps(asdict(cfg), default=str)),
            "dataset_card": {
                k: shards.card[k]
                for k in ("schema_version", "source", "slices", "patients", "config_digest", "per_split")
            },
        },
    )
    return bundle_dir


def run_train(shards: str | ShardSet, out: str, cfg: TrainConfig, name: str | None = None, log=print) -> TrainResult:
    """Train on ``shards`` (an ingest OUT, or a ShardSet such as a cross-validation fold's);
    checkpoints under ``out/<name>``, bundle ``out/<name>/bundle``."""
    from strokeray.stages.runtime import ensure_ray

    # a missing or unfinished ingest fails here, before Ray starts
    shard_set = ShardSet.of(shards)
    ensure_ray()
    run = prepare_run(shard_set, out, cfg, name)
    result = run.trainer.fit()
    if result.error:
        raise result.error
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_score", -1.0))
    with result.checkpoint.as_directory() as d:  # the latest holds the whole history
        history = json.loads(open(os.path.join(d, "state.json")).read())["history"]
    bundle_dir = f"{run.storage.rstrip('/')}/{run.name}/bundle"
    with best_ckpt.as_directory() as d:
        export_bundle(d, bundle_dir, run.cfg, shard_set, dict(best_metrics), history)
    score = run.cfg.score_name()
    log(
        f"[train] {cfg.task} {run.cfg.model.backbone}: best {score}={best_metrics.get(score)}"
        f" at epoch {best_metrics.get('epoch')} -> {bundle_dir}"
    )
    return TrainResult(
        out=f"{run.storage}/{run.name}",
        bundle=bundle_dir,
        best_checkpoint=best_ckpt.path,
        best_metrics=dict(best_metrics),
        history=history,
    )
