"""Ingest: any pile of CT files -> Parquet shards, a quarantine table and a dataset card.

The manifest is cut into chunks of files. Each chunk is one streaming Ray Data run (decode and
preprocess in parallel tasks, shards written as they fill) into a scratch folder, moved into
``shards/`` when complete, and marked done with the digest of its rows. A re-run skips done
chunks, redoes an interrupted one from scratch, and processes only what was added to or changed
in the source, so the same inputs always give the same rows exactly once. Memory stays bounded by
the tasks in flight, not the archive size.

OUT/
  manifest.parquet, manifest.json   the listing, labelled and split (reused)
  shards/chunk-00000-000.parquet    slices (schema: strokeray.io.shard_schema)
  quarantine.parquet                every object that could not be used, with its reason
  card.json                         counts, config, versions
  _state/                           chunk markers and quarantine parts; per-run scratch (removed at the end)
  .strokeray.json                   the marker: this folder is an ingest output (see stages.stage_dir)
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from strokeray import __version__
from strokeray.checks import check_positive
from strokeray.datasets.shard_set import CARD
from strokeray.datasets.slice_records import RecordConfig, records_for, stack_records
from strokeray.io.json_files import read_marker, write_json_at
from strokeray.io.shard_schema import QUARANTINE_COLUMNS, SCHEMA_VERSION, TENSOR_COLUMNS, stored_tensor
from strokeray.io.sources import SourceUnavailable, read_bytes
from strokeray.stages.manifest import Manifest, ManifestConfig, build_manifest, check_source, options_digest
from strokeray.stages.runtime import arrow_filesystem, cluster_capacity, ensure_ray, warm_workers
from strokeray.stages.stage_dir import StageDir, settings_digest

# LZ4, not zstd: a 2-CPU ingest of 1,024 phantom slices spent 1.8 ms a slice less in its decode
# workers and ran 10-19 % faster (3 of 3 alternating pairs); a shard reads back several times
# faster; the price is 15-23 % more bytes. (A loop that keeps its best write shows a smaller gap
# than the pipeline does; a fresh process's first zstd write costs 2.0 ms a slice, LZ4's 0.8.)
SHARD_COMPRESSION = "lz4"
# Everything ingest writes in OUT (what --overwrite may remove); anything else there is left alone.
INGEST_OUTPUTS = ("manifest.parquet", "manifest.json", "shards", "quarantine.parquet", CARD, "_state")


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

    def __post_init__(self) -> None:
        check_positive(files_per_chunk=self.files_per_chunk, files_per_task=self.files_per_task, num_cpus=self.num_cpus)


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


def shard_table(columns: dict) -> pa.Table:
    """Stacked slice records as a shard block: image columns in their stored form (see
    ``io.shard_schema``), the small per-slice arrays (boxes, shapes) in Ray's tensor type."""
    from ray.data.block import BlockAccessor

    images = [stored_tensor(name, columns[name]) for name in TENSOR_COLUMNS]
    table = BlockAccessor.batch_to_block({k: v for k, v in columns.items() if k not in TENSOR_COLUMNS})
    for column, array in images:
        table = table.append_column(column, array)
    return table


def process_batch(batch: pa.Table, records_cfg: RecordConfig, quarantine_dir: str, stored: bool = False):
    """Ray Data UDF: manifest rows in, stacked slice records out (``stored``: as a shard block);
    problems go to a side file named by the batch's content, so a retried task overwrites rather
    than duplicates."""
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
        yield shard_table(stack_records(records)) if stored else stack_records(records)


def _config_digest(options: str, cfg: IngestConfig) -> str:
    return settings_digest(
        {
            "manifest": options,
            "records": asdict(cfg.records),
            "chunk": cfg.files_per_chunk,
            "task": cfg.files_per_task,
            "schema": SCHEMA_VERSION,
        }
    )


def _tag(number: int) -> str:
    return f"chunk-{number:05d}"


def files_per_task(files: int, cpus: float, most: int) -> int:
    """Files per decode task: at most ``most``, and few enough that a chunk gives every CPU the
    cluster can have two tasks. Sized from what the autoscaler can add, not what is up: a cluster
    scaling from zero would otherwise cut each chunk for one CPU and leave the nodes that come idle."""
    return max(1, min(most, -(-files // (2 * max(1, int(cpus))))))


def chunk_dataset(table: pa.Table, cfg: IngestConfig, quarantine_dir: str, extend=None):
    """The Ray Data pipeline of one chunk (manifest rows in, slices out), before its write."""
    import ray

    step = files_per_task(table.num_rows, cluster_capacity().get("CPU", 1.0), cfg.files_per_task)
    blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)]
    # from_blocks computes the blocks' metadata here; from_arrow runs a remote task a block for it,
    # which on a fresh cluster waits for a worker to start and import Ray Data before any decoding.
    ds = ray.data.from_blocks(blocks).map_batches(
        process_batch,  # type: ignore[arg-type]  # fn_kwargs fill in the rest
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={"records_cfg": cfg.records, "quarantine_dir": quarantine_dir, "stored": extend is None},
        num_cpus=1,
    )
    if extend is not None:
        return extend(ds)
    # One fused operator (decode, preprocess, write): Ray Data's per-operator reservation would
    # hold back half the CPUs until the first task reports its output size (measured: the second
    # of two CPUs started a second late, and small chunks ran one task at a time). The setting is
    # this dataset's own copy of the context, not the process's.
    ds.context.op_resource_reservation_enabled = False
    return ds


def run_chunk(
    index: int, table: pa.Table, out: str, run: str, cfg: IngestConfig, dest: str = "shards", extend=None
) -> int:
    """Process one chunk into OUT/<dest>/chunk-<index>-*.parquet (its quarantine parts into
    OUT/_state/quarantine/chunk-<index>/); returns its file count.

    ``extend(ds)`` may add stages after decoding (scoring does: it gets the slices as arrays, not
    in their stored form, which is what ingest writes when there is no ``extend``). Scratch and quarantine parts are
    written under this run's own folder: workers orphaned by a killed run may still finish a
    write, but only into their own run's folder, which is never promoted.
    """
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    tag = _tag(index)
    run_dir = f"{out.rstrip('/')}/_state/runs/{run}"
    scratch = f"{base}/_state/runs/{run}/scratch/{tag}"
    _remove_chunk_outputs(fs, base, dest, tag)  # left by a run that died while promoting this chunk
    ds = chunk_dataset(table, cfg, f"{run_dir}/quarantine/{tag}", extend)
    afs, scratch_path = arrow_filesystem(f"{run_dir}/scratch/{tag}")
    # Map and write fuse into one task per block: decoded slices never cross the object store.
    # (A min_rows_per_file would make Ray bundle that many *input files* per task; an unfused
    # write costs a copy of every slice and, on 2 CPUs, measured 40 % slower.)
    ds.write_parquet(scratch_path, filesystem=afs, compression=SHARD_COMPRESSION)
    written = sorted(fs.glob(f"{scratch}/*.parquet"))
    fs.makedirs(f"{base}/{dest}", exist_ok=True)
    for k, path in enumerate(written):
        fs.mv(path, f"{base}/{dest}/{tag}-{k:03d}.parquet")
    parts = sorted(fs.glob(f"{base}/_state/runs/{run}/quarantine/{tag}/*.parquet"))
    if parts:
        fs.makedirs(f"{base}/_state/quarantine/{tag}", exist_ok=True)
    for path in parts:
        fs.mv(path, f"{base}/_state/quarantine/{tag}/{path.rsplit('/', 1)[-1]}")
    return len(written)


def _remove_chunk_outputs(fs, base: str, dest: str, tag: str) -> None:
    for stale in fs.glob(f"{base}/{dest}/{tag}-*.parquet"):
        fs.rm(stale)
    if fs.exists(f"{base}/_state/quarantine/{tag}"):
        fs.rm(f"{base}/_state/quarantine/{tag}", recursive=True)


def unavailable_cause(err: BaseException) -> SourceUnavailable | None:
    """The SourceUnavailable behind ``err`` (Ray wraps a task's exception, Ray Data wraps it again)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, SourceUnavailable):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def run_chunks(manifest: Manifest, out: str, run_one, stage: str, dest: str, log=print) -> tuple[int, int]:
    """Run ``run_one(number, rows, run_id)`` over the manifest's chunks not marked done (with the
    same content) in OUT/_state/done; outputs of chunks the manifest no longer has are removed
    first, and every run's scratch last. Returns (chunks run, chunks skipped)."""
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    run = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    chunks = manifest.chunks()
    current = {_tag(number) for number, _, _ in chunks}
    # Chunks the manifest no longer has (their files left or changed the source, so their rows are
    # processed anew), finished or cut off while promoting: their outputs would be duplicates.
    found = [
        *fs.glob(f"{base}/_state/done/chunk-*.json"),
        *fs.glob(f"{base}/{dest}/chunk-*.parquet"),
        *fs.glob(f"{base}/_state/quarantine/chunk-*"),
    ]
    tags = {m.group(0) for m in (re.match(r"chunk-\d+", path.rsplit("/", 1)[-1]) for path in found) if m}
    for tag in tags - current:
        _remove_chunk_outputs(fs, base, dest, tag)
        if fs.exists(f"{base}/_state/done/{tag}.json"):
            fs.rm(f"{base}/_state/done/{tag}.json")
    done = skipped = 0
    for position, (number, rows, digest) in enumerate(chunks):
        tag = _tag(number)
        marker = f"{base}/_state/done/{tag}.json"
        if (read_marker(fs, marker) or {}).get("digest") == digest:
            skipped += 1
            continue
        if fs.exists(marker):
            fs.rm(marker)
        t0 = time.perf_counter()
        try:
            files = run_one(number, rows, run)
        except Exception as err:
            cause = unavailable_cause(err)
            if cause is None:
                raise
            raise SourceUnavailable(
                f"{stage} stopped at chunk {position + 1}/{len(chunks)}, the source stopped answering: {cause}. "
                f"The {done + skipped} finished chunks are kept: re-run the same command to resume."
            ) from err
        fs.makedirs(f"{base}/_state/done", exist_ok=True)
        write_json_at(fs, marker, {"files": rows.num_rows, "outputs": files, "digest": digest}, indent=None)
        done += 1
        dt = time.perf_counter() - t0
        log(
            f"[{stage}] chunk {position + 1}/{len(chunks)}: {rows.num_rows} files in {dt:.1f}s"
            f" ({rows.num_rows / dt:.1f} files/s)"
        )
    if fs.exists(f"{base}/_state/runs"):
        # Scratch of this run and of killed ones: everything worth keeping has been promoted.
        fs.rm(f"{base}/_state/runs", recursive=True)
    return done, skipped


def merge_quarantine(fs, base: str, manifest: Manifest) -> pa.Table:
    """Listing problems plus the quarantine parts of the manifest's chunks."""
    parts = [_quarantine_part(manifest.problems)]
    for number, _, _ in manifest.chunks():
        for path in sorted(fs.glob(f"{base}/_state/quarantine/{_tag(number)}/*.parquet")):
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
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
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
        "source_changes": manifest.changes,
        "shadowed_by_dicom": len(manifest.shadowed),
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "config_digest": digest,
        "shards": files,
    }


def run_ingest(src: str, out: str, cfg: IngestConfig = IngestConfig(), log=print) -> IngestSummary:
    """Ingest ``src`` into ``out`` (both local paths or fsspec URLs); see the module docstring.

    Everything that can be checked without Ray is checked first: the source exists and holds
    files, the output folder is ours to write (see StageDir), the labels CSV is valid.
    """
    started = time.perf_counter()
    check_source(src)
    labels = read_bytes(cfg.manifest.labels) if cfg.manifest.labels else None
    digest = _config_digest(options_digest(src, cfg.manifest, labels), cfg)
    stage = StageDir(out, "ingest", INGEST_OUTPUTS, done=CARD)
    stage.claim([src, *([cfg.manifest.labels] if cfg.manifest.labels else [])], digest, cfg.overwrite)
    fs, base = stage.fs, stage.base
    ensure_ray(cfg.num_cpus)
    warm_workers("ray.data", "strokeray.stages.ingest")  # while the driver lists and reads headers
    manifest = build_manifest(src, out, cfg.manifest, log, cfg.files_per_chunk, cfg.num_cpus)
    summary = IngestSummary(out=out, objects=manifest.rows)
    summary.chunks_done, summary.chunks_skipped = run_chunks(
        manifest, out, lambda index, table, run: run_chunk(index, table, out, run, cfg), "ingest", "shards", log
    )
    quarantine = merge_quarantine(fs, base, manifest)
    card = _card(fs, base, src, manifest, quarantine, cfg, digest)
    stage.finish(card)
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
