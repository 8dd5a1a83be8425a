"""The one-command GPU check (`strokeray benchmark gpu`): every GPU path on phantoms, in minutes.

On a small phantom archive it trains both models with AMP (one Ray Train worker per GPU, DDP
across all GPUs present), runs a two-trial search packed onto GPU fractions, scores the archive
with GPU actors, counts the classifier decisions that change between fp32 on the CPU and fp16
autocast on the GPU, and counts host-device syncs in a training step. Each step is a row of a
pass/fail table with images/s, peak GPU memory and mean GPU utilisation (sampled with nvidia-smi).
Without a CUDA device it says so and the command exits non-zero: nothing here runs on a CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from strokeray.benchmarks.ingest import machine


class NoGpuError(RuntimeError):
    """No CUDA device is visible to torch."""


@dataclass
class GpuCheck:
    machine: str
    device: dict
    rows: list[dict] = field(default_factory=list)  # step, passed, seconds and what was measured
    passed: bool = False


def cuda_device() -> dict:
    """The CUDA devices torch sees (name, memory, capability, CUDA and driver versions); NoGpuError
    where there are none, e.g. a driver older than the CUDA build of torch (13.0 needs >= 580)."""
    import torch

    if not torch.cuda.is_available():
        raise NoGpuError(
            f"no CUDA device visible to torch {torch.__version__} (CUDA build {torch.version.cuda}): "
            "nothing to check on this machine; run it on a GPU node (its driver must be >= 580 "
            "for a CUDA 13 build)"
        )
    props = torch.cuda.get_device_properties(0)
    driver = _nvidia_smi("driver_version")
    return {
        "count": torch.cuda.device_count(),
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": driver[0] if driver else "unknown",
    }


def _nvidia_smi(query: str) -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


class Utilisation:
    """Mean and peak GPU utilisation (%, all GPUs) while the ``with`` block runs, from nvidia-smi."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s, self._stop = every_s, threading.Event()
        self.samples: list[float] = []

    def __enter__(self) -> Utilisation:
        def poll() -> None:
            while not self._stop.wait(self.every_s):
                self.samples += [float(v) for v in _nvidia_smi("utilization.gpu") if v.replace(".", "").isdigit()]

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        return (
            {"gpu_util_mean_pct": round(float(np.mean(self.samples)), 1), "gpu_util_max_pct": max(self.samples)}
            if self.samples
            else {}
        )


def decision_flips(p_a: np.ndarray, p_b: np.ndarray, threshold: float) -> dict:
    """Slices called differently at ``threshold`` from two runs' probabilities of the same views."""
    a, b = np.asarray(p_a, np.float64), np.asarray(p_b, np.float64)
    return {
        "slices": int(a.size),
        "flips": int(np.sum((a >= threshold) != (b >= threshold))),
        "max_abs_diff": float(np.max(np.abs(a - b))) if a.size else 0.0,
    }


def _step(check: GpuCheck, name: str, run, log) -> dict | None:
    """Run one step of the check; its row (failed, with the error, if it raised)."""
    began = time.perf_counter()
    try:
        with Utilisation() as util:
            passed, detail, value = run()
        row = {"step": name, "passed": bool(passed), **detail, **util.report()}
    except Exception as err:  # one broken path must not hide the others
        row, value = {"step": name, "passed": False, "error": f"{type(err).__name__}: {err}"[:400]}, None
    row["seconds"] = round(time.perf_counter() - began, 1)
    check.rows.append(row)
    log(f"[gpu] {name}: {'PASS' if row['passed'] else 'FAIL'} {row}")
    return value


def sync_count(steps_cfg: dict, batch: dict, n_steps: int = 5) -> tuple[int, float]:
    """(host-device syncs torch warns about, steps/s) over ``n_steps`` training steps in this process."""
    import torch

    from strokeray.learn.models import ModelConfig, build_model
    from strokeray.learn.steps import TaskSteps

    device = torch.device("cuda")
    model = build_model(ModelConfig(task=steps_cfg["task"], backbone="resnet18", num_classes=steps_cfg["classes"]))
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = TaskSteps(steps_cfg["task"], device, input_size=128)
    fit = steps.task.fit_meter()  # as the training loop steps: with its device-side fit meter
    steps.train_step(model, optimizer, batch, fit)  # warm-up: cuDNN autotuning and allocations
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        began = time.perf_counter()
        try:
            for _ in range(n_steps):
                steps.train_step(model, optimizer, batch, fit)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return syncs, n_steps / (time.perf_counter() - began)


def run_gpu_check(workdir: str, patients: int = 16, epochs: int = 3, log=print) -> GpuCheck:
    """Every GPU path on phantoms under ``workdir``; raises NoGpuError without a CUDA device."""
    import pyarrow.parquet as pq

    from strokeray.datasets.shard_set import ShardSet
    from strokeray.datasets.splits import SplitConfig
    from strokeray.datasets.synth import SynthConfig
    from strokeray.io.shard_schema import tensor_array
    from strokeray.learn.augment import AugmentConfig
    from strokeray.learn.models import ModelConfig
    from strokeray.learn.tasks import CLASSIFY, SEGMENT
    from strokeray.stages.evaluate import run_evaluate
    from strokeray.stages.ingest import IngestConfig, run_ingest
    from strokeray.stages.manifest import ManifestConfig
    from strokeray.stages.score import ScoreConfig, run_score
    from strokeray.stages.synth import run_synth
    from strokeray.stages.train import TrainConfig, run_train
    from strokeray.stages.tune import SearchConfig, SearchSpace, run_search

    device = cuda_device()
    check = GpuCheck(machine=machine(), device=device)
    root = Path(workdir)
    archive, shards = str(root / "archive"), str(root / "shards")
    quiet = lambda *_: None  # noqa: E731
    run_synth(archive, SynthConfig(patients=patients, seed=0))
    run_ingest(
        archive,
        shards,
        IngestConfig(manifest=ManifestConfig(split=SplitConfig(mode="stratified")), overwrite=True),
        quiet,
    )
    bundles: dict[str, str] = {}

    def train(task: str):
        def run():
            cfg = TrainConfig(
                task=task,
                model=ModelConfig(backbone="resnet18", dropout=0.0),
                epochs=epochs,
                batch_size=32,
                lr=1e-3,
                input_size=128,
                num_workers=device["count"],
                use_gpu=True,
                augment=AugmentConfig(strength=0.5),
                seed=0,
            )
            r = run_train(shards, str(root / "train"), cfg, name=f"{task}-gpu", log=quiet)
            bundles[task] = r.bundle
            losses = [h["train_loss"] for h in r.history]
            last = r.history[-1]
            return (
                all(np.isfinite(losses)) and losses[-1] < losses[0],
                {
                    "workers": device["count"],
                    "images_per_s": round(last["train_images_per_s"], 1),
                    "gpu_peak_memory_mb": round(last.get("gpu_peak_memory_mb", 0.0)),
                    "first_loss": round(losses[0], 4),
                    "last_loss": round(losses[-1], 4),
                },
                None,
            )

        return run

    def search():
        cfg = SearchConfig(
            task=CLASSIFY.name,
            samples=2,
            max_epochs=2,
            grace_period=1,
            use_gpu=True,
            gpus_per_trial=0.5,
            space=SearchSpace(backbones=("resnet18",), batch_size=(32,), input_size=(128,)),
        )
        r = run_search(shards, str(root / "tune"), cfg, registry=str(root / "registry"), overwrite=True, log=quiet)
        done = [row for row in r.rows if row["best_score"] == row["best_score"]]  # NaN: no checkpoint
        return len(done) == 2, {"trials": len(r.rows), "with_a_result": len(done)}, None

    def score():
        r = run_score(
            archive,
            str(root / "score"),
            bundles[CLASSIFY.name],
            bundles[SEGMENT.name],
            registry=None,
            cfg=ScoreConfig(use_gpu=True, overwrite=True),
            log=quiet,
        )  # batch sized by free memory
        return (
            r.slices > 0,
            {"slices": r.slices, "slices_per_s": round(r.slices / max(r.seconds, 1e-9), 1), "batch_size": r.batch_size},
            None,
        )

    def flips():
        probs, threshold = {}, 0.5
        for dev in ("cpu", "cuda"):
            pred = str(root / f"test-{dev}.parquet")
            threshold = run_evaluate(
                bundles[CLASSIFY.name], shards, "test", predictions=pred, log=quiet, device=dev
            ).metrics["threshold"]
            probs[dev] = np.asarray(pq.read_table(pred)["probability"])
        found = decision_flips(probs["cpu"], probs["cuda"], threshold)
        return found["flips"] <= max(1, found["slices"] // 100), found, None

    def syncs():
        data = ShardSet.open(shards)
        table = next(t for t in data.tables([SEGMENT.image_column, SEGMENT.target_column]) if t.num_rows >= 8)
        size = data.view_size(SEGMENT.view)
        batch = {
            SEGMENT.image_column: tensor_array(table[SEGMENT.image_column][:16], (3, size, size)),
            SEGMENT.target_column: SEGMENT.targets(table[SEGMENT.target_column][:16], size),
        }
        n, rate = sync_count({"task": SEGMENT.name, "classes": SEGMENT.num_classes}, batch)
        # Loss and fit meter stay on the device and augmentation copies from pinned memory; what is
        # left is GradScaler's test for inf/NaN gradients, read on the host once a step.
        return n <= 5, {"syncs_in_5_steps": n, "steps_per_s": round(rate, 2)}, None

    for name, run in (
        ("train classifier (AMP, DDP)", train(CLASSIFY.name)),
        ("train segmenter (AMP, DDP)", train(SEGMENT.name)),
        ("search, 2 trials at 0.5 GPU", search),
        ("score with GPU actors", score),
        ("CPU fp32 vs GPU fp16 decisions", flips),
        ("host-device syncs per step", syncs),
    ):
        if name.startswith(("score", "CPU")) and len(bundles) < 2:
            check.rows.append({"step": name, "passed": False, "error": "skipped: a training step failed"})
            continue
        _step(check, name, run, log)
    check.passed = all(r["passed"] for r in check.rows)
    return check


def table(check: GpuCheck) -> str:
    """The check as a Markdown table (for the README)."""
    lines = [
        f"GPU check on {check.device.get('count')} x {check.device.get('name')} "
        f"(driver {check.device.get('driver')}, CUDA {check.device.get('cuda')}, torch {check.device.get('torch')})",
        "",
        "| step | result | seconds | measured |",
        "|---|---|---|---|",
    ]
    for r in check.rows:
        measured = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("step", "passed", "seconds"))
        lines.append(f"| {r['step']} | {'pass' if r['passed'] else 'FAIL'} | {r.get('seconds', '')} | {measured} |")
    return "\n".join(lines)
