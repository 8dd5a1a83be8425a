"""Ingest: any pile of CT files -> Parquet shards, a quarantine table and a dataset card.

The manifest is cut into chunks of files. Each chunk is one streaming Ray Data run (decode and
preprocess in parallel tasks, shards written as they fill) into a scratch folder, moved into
``shards/`` when complete, and marked done. A re-run skips done chunks and redoes an interrupted
one from scratch, so the same inputs always give the same rows exactly once. Memory stays bounded
by the tasks in flight, not the archive size.

OUT/
  manifest.parquet, manifest.json   the listing, labelled and split (reused)
  shards/chunk-00000-000.parquet    slices (schema: strokeray.io.shard_schema)
  quarantine.parquet                every object that could not be used, with its reason
  card.json                         counts, config, versions
  _state/                           chunk markers; per-run scratch and quarantine parts
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from strokeray import __version__
from strokeray.datasets.slice_records import RecordConfig, records_for, stack_records
from strokeray.io.shard_schema import QUARANTINE_COLUMNS, SCHEMA_VERSION
from strokeray.stages.manifest import Manifest, ManifestConfig, build_manifest
from strokeray.stages.runtime import arrow_filesystem, ensure_ray


@dataclass(frozen=True)
class IngestConfig:
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    records: RecordConfig = field(default_factory=RecordConfig)
    files_per_chunk: int = 1000  # the work an interruption can lose; memory does not grow with it
    # One Ray task decodes this many files and writes them as one shard (~17 MB at 128 slices).
    # Small chunks use fewer, so that every CPU gets at least two tasks.
    files_per_task: int = 128
    num_cpus: int | None = None  # for the local Ray; ignored on a cluster
    overwrite: bool = False  # discard an OUT made with other settings


@dataclass
class IngestSummary:
    out: str
    objects: int = 0
    slices: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    chunks_done: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0


def _quarantine_part(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in QUARANTINE_COLUMNS]))


def process_batch(batch: pa.Table, records_cfg: RecordConfig, quarantine_dir: str):
    """Ray Data UDF: manifest rows in, stacked slice records out; problems go to a side file
    named by the batch's content, so a retried task overwrites rather than duplicates."""
    import cv2

    cv2.setNumThreads(1)  # a task owns one CPU; OpenCV's own pool would oversubscribe it
    records: list[dict] = []
    problems: list[dict] = []
    names = []
    for row in batch.to_pylist():
        names.append(row["name"])
        got, bad = records_for(row, records_cfg)
        records.extend(got)
        problems.extend(bad)
    if problems:
        fs, base = fsspec.core.url_to_fs(quarantine_dir)
        fs.makedirs(base, exist_ok=True)
        digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
        with fs.open(f"{base}/{digest}.parquet", "wb") as fh:
            pq.write_table(_quarantine_part(problems), fh)
    if records:
        yield stack_records(records)


def _config_digest(manifest: Manifest, cfg: IngestConfig) -> str:
    blob = json.dumps(
        {"manifest": manifest.digest, "records": asdict(cfg.records), "chunk": cfg.files_per_chunk,
         "task": cfg.files_per_task, "schema": SCHEMA_VERSION},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_chunk(index: int, table: pa.Table, out: str, run: str, cfg: IngestConfig, dest: str = "shards",
              extend=None) -> int:
    """Process one chunk into OUT/<dest>/chunk-<index>-*.parquet; returns its file count.

    ``extend(ds)`` may add stages after decoding (scoring does). Scratch and quarantine parts live
    under this run's own folder: workers orphaned by a killed run may still finish a write, but
    only into their own run's folder, which is never promoted.
    """
    import ray

    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    tag = f"chunk-{index:05d}"
    run_dir = f"{out.rstrip('/')}/_state/runs/{run}"
    scratch = f"{base}/_state/runs/{run}/scratch/{tag}"
    for stale in fs.glob(f"{base}/{dest}/{tag}-*.parquet"):
        fs.rm(stale)  # left by a run that died while promoting this chunk
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    step = max(1, min(cfg.files_per_task, -(-table.num_rows // (2 * cpus))))
    blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)]
    ds = ray.data.from_arrow(blocks).map_batches(
        process_batch,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={"records_cfg": cfg.records, "quarantine_dir": f"{run_dir}/quarantine/{tag}"},
        num_cpus=1,
    )
    if extend is not None:
        ds = extend(ds)
    afs, scratch_path = arrow_filesystem(f"{run_dir}/scratch/{tag}")
    # Map and write fuse into one task per block: decoded slices never cross the object store.
    # (A min_rows_per_file would make Ray bundle that many *input files* per task; an unfused
    # write costs a copy of every slice and, on 2 CPUs, measured 40 % slower.)
    ds.write_parquet(scratch_path, filesystem=afs, compression="zstd")
    written = sorted(fs.glob(f"{scratch}/*.parquet"))
    fs.makedirs(f"{base}/{dest}", exist_ok=True)
    for k, path in enumerate(written):
        fs.mv(path, f"{base}/{dest}/{tag}-{k:03d}.parquet")
    return len(written)


def run_chunks(table: pa.Table, out: str, files_per_chunk: int, run_one, stage: str, log=print):
    """Run ``run_one(index, rows, run_id)`` over the chunks of ``table`` not marked done in
    OUT/_state/done; returns ({chunk tag: the run that completed it}, chunks run, chunks skipped)."""
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    run = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    runs: dict[str, str] = {}
    done = skipped = 0
    starts = list(range(0, table.num_rows, max(1, files_per_chunk)))
    for index, start in enumerate(starts):
        tag = f"chunk-{index:05d}"
        marker = f"{base}/_state/done/{tag}.json"
        if fs.exists(marker):
            with fs.open(marker, "r") as fh:
                runs[tag] = json.load(fh)["run"]
            skipped += 1
            continue
        t0 = time.perf_counter()
        rows = table.slice(start, files_per_chunk)
        files = run_one(index, rows, run)
        fs.makedirs(f"{base}/_state/done", exist_ok=True)
        with fs.open(marker, "w") as fh:
            json.dump({"files": rows.num_rows, "outputs": files, "run": run}, fh)
        runs[tag] = run
        done += 1
        dt = time.perf_counter() - t0
        log(f"[{stage}] chunk {index + 1}/{len(starts)}: {rows.num_rows} files in {dt:.1f}s ({rows.num_rows / dt:.1f} files/s)")
    return runs, done, skipped


def merge_quarantine(fs, base: str, manifest: Manifest, runs: dict[str, str]) -> pa.Table:
    """Listing problems plus each chunk's quarantine parts, from the run that completed it."""
    parts = [_quarantine_part(manifest.problems)]
    for tag, run in sorted(runs.items()):
        for path in sorted(fs.glob(f"{base}/_state/runs/{run}/quarantine/{tag}/*.parquet")):
            with fs.open(path, "rb") as fh:
                parts.append(pq.read_table(fh))
    table = pa.concat_tables(parts).sort_by([("source", "ascending"), ("stage", "ascending")])
    with fs.open(f"{base}/quarantine.parquet", "wb") as fh:
        pq.write_table(table, fh)
    return table


def _card(fs, base: str, src: str, manifest: Manifest, quarantine: pa.Table, cfg: IngestConfig, digest: str) -> dict:
    columns = ["id", "patient", "split", "label", "lesion", "has_mask", "brain_found"]
    shards = sorted(fs.glob(f"{base}/shards/*.parquet"))
    tables = []
    files = []
    for path in shards:
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh, columns=columns)
        tables.append(t)
        files.append({"file": path.rsplit("/", 1)[-1], "rows": t.num_rows, "bytes": fs.size(path)})
    meta = pa.concat_tables(tables).to_pydict() if tables else {c: [] for c in columns}
    per_split: dict[str, dict] = {}
    for split, label, lesion, patient in zip(meta["split"], meta["label"], meta["lesion"], meta["patient"]):
        s = per_split.setdefault(split, {"slices": 0, "patients": set(), "label": {}, "lesion": {}})
        s["slices"] += 1
        s["patients"].add(patient)
        s["label"][str(label)] = s["label"].get(str(label), 0) + 1
        s["lesion"][str(lesion)] = s["lesion"].get(str(lesion), 0) + 1
    for s in per_split.values():
        s["patients"] = len(s["patients"])
    reasons: dict[str, int] = {}
    for r in quarantine.column("reason").to_pylist():
        reasons[r] = reasons.get(r, 0) + 1
    ids = meta["id"]
    return {
        "schema_version": SCHEMA_VERSION,
        "strokeray_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": src,
        "layout": manifest.layout,
        "objects": manifest.rows,
        "slices": len(ids),
        "patients": len(set(meta["patient"])),
        "per_split": per_split,
        "with_mask": int(sum(meta["has_mask"])),
        "brain_found": int(sum(meta["brain_found"])),
        "duplicate_ids": len(ids) - len(set(ids)),
        "quarantined": quarantine.num_rows,
        "quarantine_reasons": reasons,
        "skipped_sidecar_files": len(manifest.skipped),
        "shadowed_by_dicom": len(manifest.shadowed),
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "config_digest": digest,
        "shards": files,
    }


def run_ingest(src: str, out: str, cfg: IngestConfig = IngestConfig(), log=print) -> IngestSummary:
    """Ingest ``src`` into ``out`` (both local paths or fsspec URLs); see the module docstring."""
    started = time.perf_counter()
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    state = f"{base}/_state/config.json"
    if cfg.overwrite and fs.exists(base):
        fs.rm(base, recursive=True)
    ensure_ray(cfg.num_cpus)
    manifest = build_manifest(src, out, cfg.manifest, log)
    digest = _config_digest(manifest, cfg)
    if fs.exists(state):
        with fs.open(state, "r") as fh:
            previous = json.load(fh).get("digest")
        if previous != digest:
            raise ValueError(
                f"{out} holds an ingest made with other inputs or settings ({previous} != {digest});"
                " use a new output folder or --overwrite"
            )
    fs.makedirs(f"{base}/_state", exist_ok=True)
    with fs.open(state, "w") as fh:
        json.dump({"digest": digest}, fh)
    summary = IngestSummary(out=out, objects=manifest.rows)
    runs, summary.chunks_done, summary.chunks_skipped = run_chunks(
        manifest.table, out, cfg.files_per_chunk, lambda index, table, run: run_chunk(index, table, out, run, cfg),
        "ingest", log)
    quarantine = merge_quarantine(fs, base, manifest, runs)
    card = _card(fs, base, src, manifest, quarantine, cfg, digest)
    with fs.open(f"{base}/card.json", "w") as fh:
        json.dump(card, fh, indent=2)
    summary.slices = card["slices"]
    summary.quarantined = card["quarantined"]
    summary.reasons = card["quarantine_reasons"]
    summary.shards = len(card["shards"])
    summary.seconds = round(time.perf_counter() - started, 2)
    log(
        f"[ingest] {summary.slices} slices from {summary.objects} objects in {summary.shards} shards,"
        f" {summary.quarantined} quarantined {summary.reasons} ({summary.chunks_skipped} chunks already done)"
        f" -> {out} in {summary.seconds:.1f}s"
    )
    return summary
