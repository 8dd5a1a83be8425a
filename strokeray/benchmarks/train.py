"""Training benchmark: the Ray Train loop against a plain PyTorch loop, and quality on phantoms.

Throughput: images per second of the training pass (augment, forward, backward, step) in
(a) a plain PyTorch loop over the training split already in memory, and (b) ``strokeray train``
with one Ray Train worker fed by Ray Data, same model, batch size, input size, augmentation and
torch thread count (the worker's). The first epoch of each is warm-up and is not counted.
Quality: phantom shards, both models trained with the CLI's defaults for this budget and scored
on the held-out test split by ``strokeray evaluate``; targets mean lesion IoU >= 0.7 and slice
accuracy >= 0.95.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from strokeray.benchmarks.ingest import machine
from strokeray.learn.augment import AugmentConfig
from strokeray.learn.models import ModelConfig
from strokeray.learn.tasks import CLASSIFY, SEGMENT, get_task
from strokeray.stages.train import TrainConfig


@dataclass(frozen=True)
class QualityRun:
    """One model trained on the phantom shards and scored on their test split."""

    task: str
    backbone: str
    input_size: int
    epochs: int
    batch_size: int
    lr: float
    augment: float

    def train_config(self, workers: int) -> TrainConfig:
        return TrainConfig(
            task=self.task,
            model=ModelConfig(backbone=self.backbone),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            input_size=self.input_size,
            augment=AugmentConfig(strength=self.augment),
            num_workers=workers,
        )


QUALITY_RUNS = (
    QualityRun(SEGMENT.name, "resnet18", 128, epochs=12, batch_size=8, lr=1e-3, augment=0.5),
    QualityRun(CLASSIFY.name, "resnet18", 128, epochs=30, batch_size=8, lr=3e-4, augment=0.5),
)
TARGETS = {SEGMENT.name: ("mean_lesion_iou", 0.70), CLASSIFY.name: ("slice_accuracy", 0.95)}


@dataclass
class TrainBenchmark:
    machine: str
    shards: str
    throughput: dict[str, dict] = field(default_factory=dict)
    quality: dict[str, dict] = field(default_factory=dict)
    targets_met: dict[str, bool] = field(default_factory=dict)


def phantom_shards(workdir: Path, patients: int = 40, slices: int = 6, size: int = 256, log=print) -> str:
    """Phantom archive -> shards with a stratified patient split (reused when already there)."""
    from strokeray.datasets.phantom import PhantomConfig
    from strokeray.datasets.splits import SplitConfig
    from strokeray.datasets.synth import SynthConfig, write_archive
    from strokeray.stages.ingest import IngestConfig, run_ingest
    from strokeray.stages.manifest import ManifestConfig

    archive, shards = workdir / "archive", workdir / "shards"
    if not (archive / "synth.json").exists():
        write_archive(
            str(archive),
            SynthConfig(
                patients=patients, seed=3, png=False, overlays=False, phantom=PhantomConfig(size=size, slices=slices)
            ),
        )
    split = SplitConfig(mode="stratified", use_layout_splits=False)
    run_ingest(str(archive), str(shards), IngestConfig(manifest=ManifestConfig(split=split)), log=log)
    return str(shards)


def training_rows(shards: str, task: str) -> dict[str, np.ndarray]:
    """The task's training split as in-memory numpy arrays (what the plain loop iterates)."""
    from strokeray.datasets.shard_set import ShardSet
    from strokeray.io.shard_schema import tensor_array

    t, data = get_task(task), ShardSet.open(shards)
    size = data.view_size(t.view)
    table = data.rows("train", t)
    return {
        t.image_column: tensor_array(table[t.image_column], (len(data.preprocess.windows), size, size)),
        t.target_column: t.targets(table[t.target_column], size),
    }


def plain_loop(rows: dict[str, np.ndarray], cfg: TrainConfig, threads: int, epochs: int) -> float:
    """Images per second of a plain PyTorch loop, epochs after the first."""
    import torch

    from strokeray.learn.models import build_model
    from strokeray.learn.steps import TaskSteps

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = TaskSteps(
            get_task(cfg.task), torch.device("cpu"), cfg.input_size, cfg.augment, cfg.seg_loss, seed=cfg.seed
        )
        n = len(next(iter(rows.values())))
        rng = np.random.default_rng(cfg.seed)
        rates = []
        for _ in range(epochs):
            order = rng.permutation(n)
            began, seen = time.perf_counter(), 0
            for s in range(0, n, cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                seen += steps.train_step(model, optimizer, {k: v[idx] for k, v in rows.items()})[1]
            rates.append(seen / (time.perf_counter() - began))
        return statistics.median(rates[1:])
    finally:
        torch.set_num_threads(before)


def throughput(
    shards: str, task: str, backbone: str, input_size: int, batch_size: int, epochs: int, workdir: Path, log=print
) -> dict:
    """Ray Train (1 worker) against the plain loop for one model; returns the numbers and the ratio."""
    import shutil

    from strokeray.stages.train import run_train

    cfg = TrainConfig(
        task=task,
        model=ModelConfig(backbone=backbone),
        epochs=epochs,
        batch_size=batch_size,
        lr=1e-3,
        input_size=input_size,
        num_workers=1,
    )
    runs = workdir / "throughput"
    shutil.rmtree(runs / task, ignore_errors=True)  # a fresh run, never a resume
    t = time.perf_counter()
    result = run_train(shards, str(runs), cfg, name=task, log=lambda *_: None)
    wall = time.perf_counter() - t
    history = result.history
    ray_rate = statistics.median(h["train_images_per_s"] for h in history[1:])
    threads = int(history[-1]["torch_threads"])
    rows = training_rows(shards, task)
    model_cfg = replace(cfg.model, in_channels=rows[next(iter(rows))].shape[1])
    plain_rate = plain_loop(rows, replace(cfg, model=model_cfg), threads, epochs)
    out = {
        "model": f"{backbone}@{input_size}",
        "batch_size": batch_size,
        "train_images": len(rows[next(iter(rows))]),
        "epochs": epochs,
        "torch_threads": threads,
        "plain_images_per_s": plain_rate,
        "ray_train_images_per_s": ray_rate,
        "ratio": ray_rate / plain_rate,
        "ray_train_wall_s": wall,
        "ray_train_images_per_s_end_to_end": epochs * len(rows[next(iter(rows))]) / wall,
    }
    log(
        f"[bench] {task} {out['model']} batch {batch_size}, {threads} torch thread(s): plain loop "
        f"{plain_rate:.1f} images/s, Ray Train {ray_rate:.1f} images/s -> ratio {out['ratio']:.2f} "
        f"(whole run incl. start-up and validation: {out['ray_train_images_per_s_end_to_end']:.1f} images/s)"
    )
    return out


def quality(shards: str, run: QualityRun, workdir: Path, workers: int, log=print) -> dict:
    """Train ``run`` from scratch and evaluate its bundle on the test split."""
    import shutil

    from strokeray.stages.evaluate import run_evaluate
    from strokeray.stages.train import run_train

    runs = workdir / "quality"
    shutil.rmtree(runs / run.task, ignore_errors=True)
    t = time.perf_counter()
    trained = run_train(shards, str(runs), run.train_config(workers), name=run.task, log=lambda *_: None)
    minutes = (time.perf_counter() - t) / 60
    ev = run_evaluate(trained.bundle, shards, "test", log=lambda *_: None)
    key, target = TARGETS[run.task]
    out = {
        "setting": asdict(run),
        "workers": workers,
        "train_minutes": minutes,
        "test_slices": ev.slices,
        "test_metrics": ev.metrics,
        "metric": key,
        "value": ev.metrics[key],
        "target": target,
        "ratio": ev.metrics[key] / target,
    }
    log(
        f"[bench] {run.task} {run.backbone}@{run.input_size}, {run.epochs} epochs in {minutes:.1f} min: test {key} "
        f"{out['value']:.3f} on {ev.slices} slices (target {target}, ratio {out['ratio']:.2f})"
    )
    return out


def run_train_benchmark(
    workdir: str, epochs: int = 4, quality_runs: bool = True, workers: int = 2, log=print
) -> TrainBenchmark:
    from strokeray.stages.runtime import ensure_ray

    root = Path(workdir)
    ensure_ray()
    shards = phantom_shards(root, log=lambda *_: None)
    bench = TrainBenchmark(machine=machine(), shards=shards)
    log(f"[bench] phantom shards {shards} on {bench.machine}")
    for t, batch_size in ((CLASSIFY, 16), (SEGMENT, 8)):
        bench.throughput[t.name] = throughput(shards, t.name, "resnet18", 128, batch_size, epochs, root, log)
    for task, r in bench.throughput.items():
        bench.targets_met[f"{task}: Ray Train >= 0.9 x plain loop"] = r["ratio"] >= 0.9
    if quality_runs:
        for run in QUALITY_RUNS:
            q = quality(shards, run, root, workers, log)
            bench.quality[run.task] = q
            bench.targets_met[f"{run.task}: test {q['metric']} >= {q['target']}"] = q["value"] >= q["target"]
    for k, v in bench.targets_met.items():
        log(f"[bench] target {k}: {'met' if v else 'MISSED'}")
    return bench
