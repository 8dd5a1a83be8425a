"""Ingest benchmark: slices per second against baselines in the same run, and peak memory.

(a) floor: pydicom decode of the same files alone; (b) the original study's per-file path;
(c) strokeray ingest (Ray Data, started fresh in a child process) at 1 and 2 CPUs, timed from
the moment Ray is up: the first run of that Ray, and the best of two more with its workers up;
(d) the machine's own ceiling: decode + preprocess in a plain process pool of 1 and 2 processes,
no Ray and no Parquet, measured just before and after (c) at the same number of cores, the better
kept; (e) the shard storage: writing and reading a block with images as fixed-size binary against
Ray's tensor type. Memory: the same ingest over N and 4N slices, sampling the driver's RSS and
every Ray worker's USS; bounded means 4x the data costs under 25 % more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom

from strokeray.datasets.phantom import PhantomConfig
from strokeray.datasets.synth import SynthConfig, write_archive


@dataclass
class IngestBenchmark:
    slices: int
    machine: str
    floor_slices_per_s: float = 0.0
    study_slices_per_s: float = 0.0
    ingest_1cpu_slices_per_s: float = 0.0
    ingest_2cpu_slices_per_s: float = 0.0
    # The same ingest again in the same Ray: its workers and Ray Data's helper actors are up, as the
    # pool's processes are when it is timed (a run on a running cluster starts this way too).
    ingest_1cpu_warm_slices_per_s: float = 0.0  # the best of two such runs
    ingest_2cpu_warm_slices_per_s: float = 0.0
    pool_1proc_slices_per_s: float = 0.0  # the per-file work alone in a process pool (the machine's
    pool_2proc_slices_per_s: float = 0.0  # own scaling ceiling, no Ray, no Parquet), best of two
    storage_ms_per_slice: dict[str, float] = field(default_factory=dict)  # (e) shard write / read
    ratios: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict] = field(default_factory=dict)
    targets_met: dict[str, bool] = field(default_factory=dict)


def machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}"


def make_archive(root: Path, slices: int, seed: int) -> list[str]:
    """A phantom archive of at least ``slices`` 512x512 DICOM slices; returns the DICOM paths."""
    per_patient = 8
    patients = -(-slices // per_patient)
    cfg = SynthConfig(
        patients=patients, seed=seed, png=False, overlays=False, masks=False, phantom=PhantomConfig(slices=per_patient)
    )
    if not (root / "synth.json").exists():
        write_archive(str(root), cfg)
    return sorted(str(p) for p in root.rglob("*.dcm"))


def floor(paths: list[str]) -> float:
    """Slices per second of reading and decoding alone."""
    t = time.perf_counter()
    for p in paths:
        pydicom.dcmread(p).pixel_array  # noqa: B018 - the decode is the point
    return len(paths) / (time.perf_counter() - t)


def study(paths: list[str]) -> float:
    from strokeray.benchmarks.study_baseline import run_study_baseline

    t = time.perf_counter()
    n = run_study_baseline(paths)
    return n / (time.perf_counter() - t)


def _decode_and_preprocess(paths: list[str]) -> int:
    import cv2

    from strokeray.imaging.views import preprocess
    from strokeray.io.decode import decode_slices

    cv2.setNumThreads(1)
    for p in paths:
        with open(p, "rb") as fh:
            for ct in decode_slices(fh.read(), p):
                preprocess(ct.hu, ct.spacing_mm)
    return len(paths)


def pool(paths: list[str], processes: int) -> float:
    """Slices per second of decode + preprocess in a plain process pool (no Ray, no writing)."""
    from multiprocessing import get_context

    parts = [paths[i :: processes * 8] for i in range(processes * 8)]
    with get_context("spawn").Pool(processes) as workers:
        workers.map(_decode_and_preprocess, [paths[:2]] * processes)  # imports, page cache
        t = time.perf_counter()
        n = sum(workers.map(_decode_and_preprocess, parts))
    return n / (time.perf_counter() - t)


def storage(paths: list[str], repeats: int = 3) -> dict[str, float]:
    """(e) Milliseconds a slice to write and to read one shard block of ``paths``' slices (compressed
    as shards are), image columns stored as fixed-size binary (what ingest writes) against Ray's
    tensor type (a list of pixels, what it wrote before schema 3); the best of ``repeats``, one
    warm-up each."""
    import cv2
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor

    from strokeray.datasets.layouts import ManifestRow
    from strokeray.datasets.slice_records import records_for, stack_records
    from strokeray.io.shard_schema import TENSOR_COLUMNS, tensor_array
    from strokeray.stages.ingest import SHARD_COMPRESSION, shard_table

    cv2.setNumThreads(1)
    rows = [asdict(ManifestRow(uri=p, name=p, size=0, group_rule="file", split="train")) for p in paths]
    columns = stack_records([rec for row in rows for rec in records_for(row)[0]])
    n = len(columns["id"])
    blocks = {"binary": shard_table(columns), "tensor_list": BlockAccessor.batch_to_block(columns)}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, block in blocks.items():
            path = f"{tmp}/{name}.parquet"
            for step in ("write", "read"):
                best = float("inf")
                for _ in range(repeats + 1):
                    t = time.perf_counter()
                    if step == "write":
                        pq.write_table(block, path, compression=SHARD_COMPRESSION)
                    else:
                        table = pq.read_table(path)
                        for c in TENSOR_COLUMNS:
                            tensor_array(table[c], columns[c].shape[1:])
                    best = min(best, time.perf_counter() - t)
                out[f"{name}_{step}"] = 1000 * best / n
            out[f"{name}_kb"] = os.path.getsize(path) / n / 1024
    return out


def _memory_tree(pid: int) -> dict[str, int]:
    """Driver RSS and, over Ray workers, the largest RSS and the largest USS (private memory).

    A worker's RSS also counts the pages of Ray's shared object store it has touched, which grows
    with the data streamed through it even when its own memory does not; USS excludes them.
    """
    import psutil

    out = {"driver_rss": 0, "worker_rss": 0, "worker_uss": 0}
    try:
        root = psutil.Process(pid)
        out["driver_rss"] = root.memory_info().rss
        for child in root.children(recursive=True):
            try:
                if child.name().startswith("ray::") or "default_worker.py" in " ".join(child.cmdline()):
                    out["worker_rss"] = max(out["worker_rss"], child.memory_info().rss)
                    out["worker_uss"] = max(out["worker_uss"], child.memory_full_info().uss)
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


def run_measured(cmd: list[str], memory: bool = True) -> dict:
    """Run ``cmd`` (a child Python printing one JSON line last) sampling its process tree's memory;
    returns that JSON plus the driver's peak RSS and the largest Ray worker's peak USS and RSS (MB).

    ``memory=False`` for timed runs: sampling reads every worker's smaps five times a second,
    which costs a 2-core machine a measurable share of a core (runs before 2026-11-29 night
    timed with it on)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peaks = {"driver_rss": 0, "worker_rss": 0, "worker_uss": 0}
    stop = threading.Event()

    def sample():
        while memory and not stop.is_set():
            for k, v in _memory_tree(proc.pid).items():
                peaks[k] = max(peaks[k], v)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {stdout[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update({f"{k}_peak_mb": v / 2**20 for k, v in peaks.items()})
    return result


def memory_verdicts(small: dict, large: dict, ratios: dict, targets: dict) -> None:
    """Growth of each peak from N to 4N slices into ``ratios``; bounded (< 25 %) into ``targets``.
    Worker RSS is reported only: the shared object-store pages a worker touched inflate it."""
    for key in ("driver_rss_peak_mb", "worker_uss_peak_mb", "worker_rss_peak_mb"):
        growth = large[key] / small[key] - 1.0
        ratios[f"{key}_growth_4x"] = growth
        if key != "worker_rss_peak_mb":
            targets[f"{key} growth < 25%"] = growth < 0.25


def run_child(src: str, num_cpus: int, files_per_chunk: int, memory: bool = False, runs: int = 1) -> dict:
    """Ingest ``src`` ``runs`` times, each into a new folder, in a fresh process with its own Ray;
    returns the rate of the first (``slices_per_s``: a cold Ray) and the best of the others
    (``warm_slices_per_s``), and with ``memory`` its peak memory, which slows it."""
    with tempfile.TemporaryDirectory() as out:
        return run_measured(
            [
                sys.executable,
                "-m",
                "strokeray.benchmarks.ingest",
                "--child",
                src,
                out,
                str(num_cpus),
                str(files_per_chunk),
                str(runs),
            ],
            memory,
        )


def _child_main(src: str, out: str, num_cpus: int, files_per_chunk: int, runs: int) -> None:
    from strokeray.stages.ingest import IngestConfig, run_ingest
    from strokeray.stages.runtime import ensure_ray

    ensure_ray(num_cpus)
    rates = []
    for run in range(runs):
        t = time.perf_counter()
        s = run_ingest(src, f"{out}/o{run}", IngestConfig(files_per_chunk=files_per_chunk), log=lambda *_: None)
        seconds = time.perf_counter() - t
        rates.append((s.slices, seconds))
    (slices, seconds), warm = rates[0], min(t for _, t in rates[1:] or rates)
    print(
        json.dumps(
            {"slices": slices, "seconds": seconds, "slices_per_s": slices / seconds, "warm_slices_per_s": slices / warm}
        )
    )


def run_ingest_benchmark(workdir: str, slices: int = 1024, memory: bool = True, log=print) -> IngestBenchmark:
    """The whole benchmark; archives are kept in ``workdir`` and reused by later runs."""
    root = Path(workdir)
    paths = make_archive(root / "archive", slices, seed=11)
    n = len(paths)
    bench = IngestBenchmark(slices=n, machine=machine())
    log(f"[bench] {n} slices of 512x512 phantom DICOM in {root / 'archive'} on {bench.machine}")
    floor(paths[:16])  # warm the page cache and imports for everyone
    bench.floor_slices_per_s = floor(paths)
    log(f"[bench] (a) floor, pydicom decode alone: {bench.floor_slices_per_s:.1f} slices/s")
    bench.study_slices_per_s = study(paths)
    log(f"[bench] (b) original study's per-file path: {bench.study_slices_per_s:.1f} slices/s")
    # This VM's speed drifts by a third within minutes (other tenants): each ingest is bracketed by
    # the pool at the same core count, and each side keeps its best run.
    for cpus in (1, 2):
        before = pool(paths, cpus)
        r = run_child(str(root / "archive"), cpus, files_per_chunk=1000, runs=3)
        setattr(bench, f"pool_{cpus}proc_slices_per_s", max(before, pool(paths, cpus)))
        setattr(bench, f"ingest_{cpus}cpu_slices_per_s", r["slices_per_s"])
        setattr(bench, f"ingest_{cpus}cpu_warm_slices_per_s", r["warm_slices_per_s"])
        log(
            f"[bench] (c) strokeray ingest, {cpus} CPU: {r['warm_slices_per_s']:.1f} slices/s in a running Ray"
            f" (best of 2), {r['slices_per_s']:.1f} as the first work of a fresh one ({r['slices']} slices)"
        )
    log(
        f"[bench] (d) ceiling, decode + preprocess in a process pool: 1 process {bench.pool_1proc_slices_per_s:.1f},"
        f" 2 processes {bench.pool_2proc_slices_per_s:.1f} slices/s"
    )
    bench.storage_ms_per_slice = storage(paths[:64])
    st = bench.storage_ms_per_slice
    log(
        f"[bench] (e) shard storage, ms a slice: fixed-size binary write {st['binary_write']:.2f} read"
        f" {st['binary_read']:.2f} ({st['binary_kb']:.0f} KB); Ray's tensor list write {st['tensor_list_write']:.2f}"
        f" read {st['tensor_list_read']:.2f} ({st['tensor_list_kb']:.0f} KB)"
    )
    c1, c2 = bench.ingest_1cpu_warm_slices_per_s, bench.ingest_2cpu_warm_slices_per_s
    p1, p2 = bench.pool_1proc_slices_per_s, bench.pool_2proc_slices_per_s
    bench.ratios = {
        "ingest_1cpu_vs_study": c1 / bench.study_slices_per_s,
        "ingest_1cpu_vs_floor": c1 / bench.floor_slices_per_s,
        "ingest_2cpu_vs_1cpu": c2 / c1,
        "pool_2proc_vs_1proc": p2 / p1,
        "ingest_1cpu_vs_pool_1proc": c1 / p1,
        "ingest_2cpu_vs_pool_2proc": c2 / p2,
        "ingest_1cpu_fresh_ray_vs_pool_1proc": bench.ingest_1cpu_slices_per_s / p1,
        "ingest_2cpu_fresh_ray_vs_pool_2proc": bench.ingest_2cpu_slices_per_s / p2,
        "storage_write_tensor_list_vs_binary": st["tensor_list_write"] / st["binary_write"],
        "storage_read_tensor_list_vs_binary": st["tensor_list_read"] / st["binary_read"],
    }
    # Against the same per-file work in a bare process pool, at the same number of cores: what Ray,
    # the manifest and writing cost. Both sides are timed with their processes up (the pool after a
    # warm-up map; ingest from its second run in the same Ray); the first run of a fresh Ray, which
    # also starts Ray Data's helper actors and imports the decoders in every worker, is reported.
    # The study path and the decode floor stay as reference ratios (the study path is slower than
    # the decode floor itself, so "10x the study" cannot be met).
    bench.targets_met = {
        "ingest_1cpu_vs_pool_1proc >= 0.85": bench.ratios["ingest_1cpu_vs_pool_1proc"] >= 0.85,
        "ingest_2cpu_vs_pool_2proc >= 0.85": bench.ratios["ingest_2cpu_vs_pool_2proc"] >= 0.85,
    }
    if memory:
        small_paths = make_archive(root / "archive-quarter", max(1, n // 4), seed=12)
        # Chunks of 128 files: memory is bounded by the chunk, whatever the archive size.
        small = run_child(str(root / "archive-quarter"), 2, files_per_chunk=128, memory=True)
        large = run_child(str(root / "archive"), 2, files_per_chunk=128, memory=True)
        bench.memory = {"slices": {"small": len(small_paths), "large": n}, "small": small, "large": large}
        memory_verdicts(small, large, bench.ratios, bench.targets_met)
        log(
            f"[bench] peak memory {len(small_paths)} -> {n} slices: driver RSS {small['driver_rss_peak_mb']:.0f} -> "
            f"{large['driver_rss_peak_mb']:.0f} MB, largest worker USS {small['worker_uss_peak_mb']:.0f} -> "
            f"{large['worker_uss_peak_mb']:.0f} MB (RSS {small['worker_rss_peak_mb']:.0f} -> {large['worker_rss_peak_mb']:.0f} MB)"
        )
    for k, v in bench.ratios.items():
        log(f"[bench] ratio {k}: {v:.2f}")
    for k, v in bench.targets_met.items():
        log(f"[bench] target {k}: {'met' if v else 'MISSED'}")
    return bench


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit("usage: python -m strokeray.benchmarks.ingest --child SRC OUT_DIR NUM_CPUS FILES_PER_CHUNK RUNS")
