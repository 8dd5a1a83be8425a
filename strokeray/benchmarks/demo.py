"""Demo stability benchmark: the demo's classifier path on several seeds, side by side.

Each seed runs what `make demo` runs for the classifier (the demo archive of phantoms, stratified
shards, the demo's model search, the test split scored by the published bundle) with everything
random changed: the phantoms (patients, lesions, noise, hence who lands in which split) and the
search's sampling and training seeds. One good seed proves little; the target is test slice AUC
>= 0.95 on every seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from strokeray.benchmarks.ingest import machine
from strokeray.learn.tasks import CLASSIFY
from strokeray.stages.pipeline import PipelineConfig

TARGET_AUC = 0.95


@dataclass
class DemoBenchmark:
    machine: str
    target_slice_auc: float
    rows: list[dict] = field(default_factory=list)  # one per seed
    targets_met: dict[str, bool] = field(default_factory=dict)


def patients_by_class(shards: str) -> dict[str, dict[str, int]]:
    """split -> {"positive": n, "negative": n} patients (a patient is positive by any Stroke slice)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from strokeray.datasets.shard_set import ShardSet

    t = pa.concat_tables(ShardSet.open(shards).tables(["patient", "split", "label"]))
    t = t.filter(pc.greater_equal(t["label"], 0))
    out: dict[str, dict[str, int]] = {}
    for r in t.group_by(["split", "patient"]).aggregate([("label", "max")]).to_pylist():
        side = "positive" if r["label_max"] > 0 else "negative"
        counts = out.setdefault(r["split"], {"positive": 0, "negative": 0})
        counts[side] += 1
    return out


def demo_seed(workdir: Path, seed: int, cfg: PipelineConfig, log=print) -> dict:
    """The demo classifier built and tested from seed ``seed`` under ``workdir/seed-S``."""
    from strokeray.stages.ingest import run_ingest
    from strokeray.stages.pipeline import demo_archive, evaluate_once
    from strokeray.stages.run_layout import RunLayout
    from strokeray.stages.tune import run_search

    quiet = lambda *_: None  # noqa: E731
    layout = RunLayout(str(workdir / f"seed-{seed}"))
    t = time.perf_counter()
    demo_archive(layout, replace(cfg.synth, seed=seed), quiet)
    run_ingest(layout.archive, layout.shards, cfg.ingest, quiet)
    found = run_search(
        layout.shards,
        layout.tune,
        replace(cfg.classify, seed=seed),
        name=f"{CLASSIFY.name}-search",
        registry=layout.registry,
        overwrite=True,
        log=quiet,
    )
    metrics = evaluate_once(found.bundle, layout, CLASSIFY, quiet)
    row = {
        "seed": seed,
        "minutes": (time.perf_counter() - t) / 60,
        "patients": patients_by_class(layout.shards),
        "best_trial": {
            k: v for k, v in found.best.items() if k.startswith("param_") or k in ("best_epoch", "best_score")
        },
        **{
            k: metrics.get(k)
            for k in (
                "slice_n",
                "slice_auc",
                "slice_accuracy",
                "patient_n",
                "patient_auc",
                "patient_accuracy",
                "threshold",
            )
        },
    }
    log(
        f"[bench] demo seed {seed}: test slice AUC {row['slice_auc']:.3f}, patient AUC {row['patient_auc']:.3f} "
        f"({row['slice_n']:.0f} slices, {row['patient_n']:.0f} patients), threshold {row['threshold']:.3f}, "
        f"{row['minutes']:.1f} min"
    )
    return row


def format_table(rows: list[dict]) -> str:
    """The seeds side by side (markdown, as the README quotes it)."""

    def split(r: dict, name: str) -> str:
        c = r["patients"].get(name, {"positive": 0, "negative": 0})
        return f"{c['positive']}+/{c['negative']}-"

    lines = [
        "| seed | val patients | test patients | test slice AUC | test patient AUC | slice accuracy | "
        "threshold | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {split(r, 'val')} | {split(r, 'test')} | {r['slice_auc']:.3f} | "
            f"{r['patient_auc']:.3f} | {r['slice_accuracy']:.3f} | {r['threshold']:.3f} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


def run_demo_benchmark(
    workdir: str,
    seeds: tuple[int, ...] = (0, 1, 2),
    cfg: PipelineConfig = PipelineConfig(),
    target: float = TARGET_AUC,
    log=print,
) -> DemoBenchmark:
    from strokeray.stages.runtime import ensure_ray

    ensure_ray(cfg.ingest.num_cpus)
    bench = DemoBenchmark(machine=machine(), target_slice_auc=target)
    log(f"[bench] the demo classifier on seeds {list(seeds)}, {bench.machine}")
    for seed in seeds:
        bench.rows.append(demo_seed(Path(workdir), seed, cfg, log))
    log(format_table(bench.rows))
    bench.targets_met[f"test slice AUC >= {target} on every seed"] = all(
        (r["slice_auc"] or 0.0) >= target for r in bench.rows
    )
    bench.targets_met["validation holds both classes on every seed"] = all(
        min(r["patients"].get("val", {"positive": 0}).values()) > 0 for r in bench.rows
    )
    for k, v in bench.targets_met.items():
        log(f"[bench] target {k}: {'met' if v else 'MISSED'}")
    return bench
