"""The manifest: one row per input object (uri, size, label, lesion, mask, patient group, split).

Listing a big bucket and reading every DICOM header is slow, so the manifest is written once
(``OUT/manifest.parquet``) and reused while the source and options are unchanged. DICOM patient
keys come from the first 64 KiB of each file, read in parallel with Ray Data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from strokeray.datasets.layouts import LabelsTable, ManifestRow, label_listing
from strokeray.datasets.splits import SplitConfig, assign_splits
from strokeray.io.decode import is_raster
from strokeray.io.pseudonym import pseudonym
from strokeray.io.raster import RASTER_SUFFIXES
from strokeray.io.sources import SourceLimits, list_inputs, read_bytes, read_head

HEADER_BYTES = 64 * 1024
MANIFEST_COLUMNS = [f for f in ManifestRow.__dataclass_fields__]


@dataclass(frozen=True)
class ManifestConfig:
    labels: str | None = None  # labels CSV (path, label, lesion, patient columns)
    labels_table: LabelsTable = field(default_factory=LabelsTable)
    split: SplitConfig = field(default_factory=SplitConfig)
    limits: SourceLimits = field(default_factory=SourceLimits)


@dataclass
class Manifest:
    table: pa.Table
    layout: str
    problems: list[dict]  # listing problems: source, stage, reason, detail
    skipped: list[str]
    shadowed: list[str]  # PNG exports dropped for their DICOM twin
    digest: str

    @property
    def rows(self) -> int:
        return self.table.num_rows


def _options_digest(src: str, cfg: ManifestConfig, labels: bytes | None) -> str:
    blob = json.dumps({"src": src, "cfg": asdict(cfg), "labels": hashlib.sha256(labels or b"").hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _header_groups(batch: dict) -> dict:
    """Ray Data UDF: the DICOM patient key of each uri (empty when unreadable)."""
    import numpy as np

    from strokeray.io.dicom_decode import dicom_patient_key

    keys = []
    for uri in batch["uri"]:
        try:
            head = read_head(uri, HEADER_BYTES)
            key = "" if is_raster(head, uri) else dicom_patient_key(head)
            if not key and len(head) == HEADER_BYTES:
                key = dicom_patient_key(read_bytes(uri))  # a header longer than 64 KiB
        except OSError:
            key = ""
        keys.append(key)
    return {"uri": batch["uri"], "group": np.array(keys, dtype=object)}


def _fill_dicom_groups(rows: list[ManifestRow]) -> None:
    need = [r for r in rows if not r.group and not r.name.lower().endswith(RASTER_SUFFIXES)]
    if not need:
        return
    import ray

    from strokeray.stages.runtime import ensure_ray

    ensure_ray()
    ds = ray.data.from_items([{"uri": r.uri} for r in need]).map_batches(_header_groups, batch_size=64, batch_format="numpy")
    found = {rec["uri"]: rec["group"] for rec in ds.iter_rows()}
    for r in need:
        if found.get(r.uri):
            r.group, r.group_rule = found[r.uri], "dicom_patient_id"


def build_manifest(src: str, out: str, cfg: ManifestConfig = ManifestConfig(), log=print) -> Manifest:
    """List, label, group and split ``src``; reuse ``out/manifest.parquet`` when it matches."""
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    labels = read_bytes(cfg.labels) if cfg.labels else None
    digest = _options_digest(src, cfg, labels)
    meta_path = f"{base}/manifest.json"
    if fs.exists(meta_path) and fs.exists(f"{base}/manifest.parquet"):
        with fs.open(meta_path, "r") as fh:
            meta = json.load(fh)
        if meta.get("digest") == digest:
            with fs.open(f"{base}/manifest.parquet", "rb") as fh:
                table = pq.read_table(fh)
            log(f"[manifest] reusing {out}/manifest.parquet ({table.num_rows} objects)")
            return Manifest(table, meta["layout"], meta["problems"], meta["skipped"], meta["shadowed"], digest)
    listing = list_inputs(src, cfg.limits)
    labelled = label_listing(listing.entries, labels, cfg.labels_table)
    rows = labelled.rows
    _fill_dicom_groups(rows)
    for r in rows:
        if not r.group:  # no patient known: the file is its own group (it cannot leak anyway)
            r.group, r.group_rule = pseudonym(r.name, "file"), "file"
    strata: dict[str, int] = {}
    layout_splits: dict[str, str] = {}
    for r in rows:
        strata[r.group] = max(strata.get(r.group, -1), r.label)
        if r.layout_split:
            layout_splits.setdefault(r.group, r.layout_split)
    splits = assign_splits(strata, cfg.split, layout_splits)
    for r in rows:
        r.split = splits[r.group]
    table = pa.Table.from_pylist([asdict(r) for r in rows], schema=_schema())
    problems = [{"source": p.source, "stage": "list", "reason": p.reason, "detail": p.detail} for p in listing.problems]
    fs.makedirs(base, exist_ok=True)
    with fs.open(f"{base}/manifest.parquet", "wb") as fh:
        pq.write_table(table, fh)
    meta = {"digest": digest, "source": src, "layout": labelled.layout, "problems": problems,
            "skipped": listing.skipped, "shadowed": labelled.dropped_duplicates, "rows": table.num_rows}
    with fs.open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=1)
    log(
        f"[manifest] {table.num_rows} objects, layout {labelled.layout}, {len(problems)} listing problems,"
        f" {len(listing.skipped)} sidecar files skipped, {len(labelled.dropped_duplicates)} PNGs shadowed by DICOM"
    )
    return Manifest(table, labelled.layout, problems, listing.skipped, labelled.dropped_duplicates, digest)


def _schema() -> pa.Schema:
    types = {"size": pa.int64(), "label": pa.int8(), "lesion": pa.int8()}
    return pa.schema([(name, types.get(name, pa.string())) for name in MANIFEST_COLUMNS])
