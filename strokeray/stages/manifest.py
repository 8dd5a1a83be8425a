"""The manifest: one row per input object (uri, size, label, lesion, mask, patient group, split,
and the resumable chunk it is processed in).

The source is listed on every run (names, sizes and change stamps: mtime, ETag or member CRC), but
the expensive part, reading DICOM headers for patient keys, is done only for objects that are new
or changed since the manifest in ``OUT/manifest.parquet``. Chunks are keyed by their rows'
content: a chunk whose rows are all unchanged keeps its number (and its finished output); new and
changed rows, and the rows of chunks that lost or changed a member, go into new chunks. So adding
files to a source processes only them, and nothing finished is redone.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from strokeray.datasets.layouts import DEFERRED_RULE, LabelsTable, ManifestRow, label_listing
from strokeray.datasets.splits import SplitConfig, assign_splits
from strokeray.imaging.overlay import HEMORRHAGIC, ISCHEMIC
from strokeray.io.decode import is_raster
from strokeray.io.json_files import read_marker, write_json_at
from strokeray.io.pseudonym import pseudonym
from strokeray.io.raster import RASTER_SUFFIXES
from strokeray.io.sources import SourceLimits, SourceUnavailable, list_inputs, read_bytes, read_head
from strokeray.stages.stage_dir import settings_digest

HEADER_BYTES = 64 * 1024
MANIFEST_COLUMNS = [f for f in ManifestRow.__dataclass_fields__]
KEY_COLUMN, CHUNK_COLUMN = "row_key", "chunk"


@dataclass(frozen=True)
class ManifestConfig:
    labels: str | None = None  # labels CSV (path, label, lesion, patient columns)
    labels_table: LabelsTable = field(default_factory=LabelsTable)
    split: SplitConfig = field(default_factory=SplitConfig)
    limits: SourceLimits = field(default_factory=SourceLimits)
    mask_lesion: int | None = None  # class of paired binary masks (1 ischemic, 2 hemorrhagic); layouts
    # Read DICOM headers for patient keys before decoding: the split needs them. Scoring has no split
    # and decoding reads the same key, so it skips this second pass over every object (rows then
    # carry DEFERRED_RULE and take the decoder's key; see ``slice_records``).
    read_headers: bool = True

    def __post_init__(self) -> None:
        if self.mask_lesion not in (None, ISCHEMIC, HEMORRHAGIC):
            raise ValueError(
                f"mask_lesion must be {ISCHEMIC} (ischemic) or {HEMORRHAGIC} (hemorrhagic), not {self.mask_lesion}"
            )


@dataclass
class Manifest:
    table: pa.Table
    layout: str
    problems: list[dict]  # listing problems: source, stage, reason, detail
    skipped: list[str]
    shadowed: list[str]  # PNG exports dropped for their DICOM twin
    digest: str  # of the options (source, labels, split): a different one is another dataset
    listing: str = ""  # of the rows' content: changes when files are added, removed or changed
    changes: dict = field(default_factory=dict)  # new / changed / removed objects against the last manifest

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def chunks(self) -> list[tuple[int, pa.Table, str]]:
        """(chunk number, its rows, digest of their content) in chunk order."""
        if not self.rows:
            return []
        out = []
        numbers = self.table.column(CHUNK_COLUMN)
        for number in sorted(set(numbers.to_pylist())):
            rows = self.table.filter(pc.equal(numbers, number))
            out.append((number, rows, _digest_of(sorted(rows.column(KEY_COLUMN).to_pylist()))))
        return out


def _digest_of(items) -> str:
    return settings_digest(items)


def options_digest(src: str, cfg: ManifestConfig, labels: bytes | None) -> str:
    options = asdict(cfg)
    if options["mask_lesion"] is None:
        del options["mask_lesion"]  # added later: manifests made before keep their digest
    # How patient keys are read is not what the dataset is: rows record it in their group rule.
    del options["read_headers"]
    return _digest_of({"src": src, "cfg": options, "labels": hashlib.sha256(labels or b"").hexdigest()})


# Up to this many headers are read in the driver, by a few threads (about 0.2 ms of CPU each from
# local disk, mostly waiting on the store from S3 or a PACS): a Ray Data pass costs several seconds
# before its first read, more than a few thousand local headers take. Bigger batches of new files
# are spread over the cluster.
LOCAL_HEADER_READS = 4096
HEADER_THREADS = 8


def _header_groups(batch: dict) -> dict:
    """Ray Data UDF: the DICOM patient key of each uri (empty when unreadable)."""
    import numpy as np

    from strokeray.io.dicom_decode import dicom_patient_key

    keys, tags = [], []
    for uri in batch["uri"]:
        try:
            head = read_head(uri, HEADER_BYTES)
            key, tag = ("", "") if is_raster(head, uri) else dicom_patient_key(head)
            if not key and len(head) == HEADER_BYTES:
                key, tag = dicom_patient_key(read_bytes(uri))  # a header longer than 64 KiB
        except SourceUnavailable:
            raise
        except Exception:  # noqa: BLE001 - any unreadable object: decoding will quarantine it with its reason
            key, tag = "", ""
        keys.append(key)
        tags.append(tag)
    return {"uri": batch["uri"], "group": np.array(keys, dtype=object), "tag": np.array(tags, dtype=object)}


def _read_groups_here(uris: list[str]) -> dict[str, tuple[str, str]]:
    """``_header_groups`` in the driver: uri -> (patient key, tag). Plain objects are read on a
    few threads; archive members in turn, since fsspec shares one open archive between them and a
    tar member is read by seeking its file."""
    from concurrent.futures import ThreadPoolExecutor

    members = [u for u in uris if "::" in u]
    plain = [u for u in uris if "::" not in u]
    step = max(1, -(-len(plain) // (4 * HEADER_THREADS)))
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        batches = list(pool.map(_header_groups, [{"uri": plain[i : i + step]} for i in range(0, len(plain), step)]))
    batches.append(_header_groups({"uri": members}))
    return {u: (g, t) for b in batches for u, g, t in zip(b["uri"], b["group"], b["tag"])}


def _may_name_patient(row: ManifestRow) -> bool:
    """Whether the object's DICOM header may name its patient (a labels CSV's patient column wins)."""
    return row.group_rule != "labels_csv" and not row.name.lower().endswith(RASTER_SUFFIXES)


def _fill_dicom_groups(
    rows: list[ManifestRow], known: dict[tuple[str, str], tuple[str, str]], num_cpus: int | None = None
) -> None:
    """DICOM PatientID wins over the file-name rules (only a labels CSV's patient column beats it),
    a study or series UID only over no rule at all; headers already read for the same object and
    stamp are reused."""
    need = []
    for r in rows:
        if not _may_name_patient(r):
            continue
        hit = known.get((r.uri, r.stamp))
        if hit is None:
            need.append(r)
        elif hit[1].startswith("dicom_"):
            r.group, r.group_rule = hit
    if not need:
        return
    if len(need) <= LOCAL_HEADER_READS:
        found = _read_groups_here([r.uri for r in need])
    else:
        import ray

        from strokeray.stages.runtime import ensure_ray

        ensure_ray(num_cpus)
        ds = ray.data.from_items([{"uri": r.uri} for r in need]).map_batches(
            _header_groups, batch_size=64, batch_format="numpy"
        )
        found = {rec["uri"]: (rec["group"], rec["tag"]) for rec in ds.iter_rows()}
    for r in need:
        key, tag = found.get(r.uri, ("", ""))
        # A study or series UID stands in for an empty PatientID only where the file name names
        # no patient: CT-ICH's Secondary Captures carry one series per slice, their names the patient.
        if key and (tag == "PatientID" or not r.group):
            r.group, r.group_rule = key, "dicom_patient_id" if tag == "PatientID" else f"dicom_{tag}"


def _row_key(row: dict) -> str:
    return _digest_of({k: row[k] for k in MANIFEST_COLUMNS})


def assign_chunks(keys: list[str], previous: pa.Table | None, files_per_chunk: int) -> tuple[list[int], int]:
    """Chunk number of each row (rows in name order, by content key): previous chunks whose rows
    are all still present and unchanged keep their number; every other row goes, in order, into
    new chunks after the highest number used so far. Returns (numbers, chunks kept)."""
    step = max(1, files_per_chunk)
    kept: dict[str, int] = {}
    start = 0
    if previous is not None and previous.num_rows:
        current = set(keys)
        members: dict[int, list[str]] = {}
        for key, number in zip(previous.column(KEY_COLUMN).to_pylist(), previous.column(CHUNK_COLUMN).to_pylist()):
            members.setdefault(number, []).append(key)
        start = max(members) + 1
        for number, chunk_keys in members.items():
            if all(k in current for k in chunk_keys):
                kept.update((k, number) for k in chunk_keys)
    numbers, pending = [], 0
    for key in keys:
        if key in kept:
            numbers.append(kept[key])
        else:
            numbers.append(start + pending // step)
            pending += 1
    return numbers, len(set(kept.values()))


def _read_previous(fs, base: str, digest: str) -> tuple[dict | None, pa.Table | None]:
    meta_path, table_path = f"{base}/manifest.json", f"{base}/manifest.parquet"
    if not (fs.exists(meta_path) and fs.exists(table_path)):
        return None, None
    meta = read_marker(fs, meta_path)
    if meta is None or meta.get("digest") != digest:
        return None, None
    with fs.open(table_path, "rb") as fh:
        table = pq.read_table(fh)
    return (meta, table) if KEY_COLUMN in table.column_names else (None, None)


def check_source(src: str) -> None:
    """Raise FileNotFoundError for a source that does not exist (before any work starts)."""
    fs, path = fsspec.core.url_to_fs(src)
    if not fs.exists(path.rstrip("/") or path):
        raise FileNotFoundError(f"no such input: {src}")


def _group_and_split(rows: list, previous: pa.Table | None, cfg: ManifestConfig, num_cpus: int | None) -> None:
    """Give every row its patient group (unchanged objects keep the last manifest's) and its split."""
    known: dict[tuple[str, str], tuple[str, str]] = {}
    if previous is not None:
        prev = previous.select(["uri", "stamp", "group", "group_rule"]).to_pydict()
        known = {(u, s): (g, r) for u, s, g, r in zip(prev["uri"], prev["stamp"], prev["group"], prev["group_rule"])}
    if cfg.read_headers:
        _fill_dicom_groups(rows, known, num_cpus)
    for r in rows:
        if not r.group:  # no patient known: the file is its own group (it cannot leak anyway)
            r.group, r.group_rule = pseudonym(r.name, "file"), "file"
        if not cfg.read_headers and _may_name_patient(r):
            r.group_rule = DEFERRED_RULE  # r.group stays the fallback for a file with no PatientID
    strata: dict[str, int] = {}
    layout_splits: dict[str, str] = {}
    for r in rows:
        strata[r.group] = max(strata.get(r.group, -1), r.label)
        if r.layout_split:
            layout_splits.setdefault(r.group, r.layout_split)
    splits = assign_splits(strata, cfg.split, layout_splits)
    for r in rows:
        r.split = splits[r.group]


def build_manifest(
    src: str,
    out: str,
    cfg: ManifestConfig = ManifestConfig(),
    log=print,
    files_per_chunk: int = 1000,
    num_cpus: int | None = None,
) -> Manifest:
    """List, label, group, split and chunk ``src``; the last manifest in ``out`` supplies the
    patient keys and chunks of unchanged objects. Raises ValueError for a source with no inputs
    and for a labels CSV that is unreadable, invalid or matches nothing (all before Ray starts)."""
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    labels = read_bytes(cfg.labels) if cfg.labels else None
    digest = options_digest(src, cfg, labels)
    meta, previous = _read_previous(fs, base, digest)
    listing = list_inputs(src, cfg.limits)
    if not listing.entries and not listing.problems:
        raise ValueError(
            f"{src} holds no input files"
            + (f" ({len(listing.skipped)} tables or notes skipped)" if listing.skipped else "")
        )
    labelled = label_listing(listing.entries, labels, cfg.labels_table, cfg.labels or "", cfg.mask_lesion)
    if labels is not None and labelled.labels_matched < len(labelled.rows):
        log(f"[manifest] labels CSV matched {labelled.labels_matched} of {len(labelled.rows)} objects")
    rows = labelled.rows
    _group_and_split(rows, previous, cfg, num_cpus)
    records = [asdict(r) for r in rows]
    keys = [_row_key(rec) for rec in records]
    listing_digest = _digest_of(keys)
    problems = [{"source": p.source, "stage": "list", "reason": p.reason, "detail": p.detail} for p in listing.problems]
    if previous is not None and meta and (meta.get("listing"), meta.get("problems")) == (listing_digest, problems):
        log(f"[manifest] reusing {out}/manifest.parquet ({previous.num_rows} objects, unchanged)")
        return Manifest(
            previous, meta["layout"], meta["problems"], meta["skipped"], meta["shadowed"], digest, listing_digest
        )
    numbers, kept = assign_chunks(keys, previous, files_per_chunk)
    table = pa.Table.from_pylist(
        [{**rec, KEY_COLUMN: k, CHUNK_COLUMN: n} for rec, k, n in zip(records, keys, numbers)], schema=_schema()
    )
    changes = _changes(previous, table) if previous is not None else {}
    doc: dict = {"digest": digest, "listing": listing_digest, "source": src, "layout": labelled.layout}
    doc.update(problems=problems, skipped=listing.skipped, shadowed=labelled.dropped_duplicates)
    write_manifest(fs, base, table, {**doc, "rows": table.num_rows, "changes": changes})
    if changes:
        _log_changes(changes, kept, log)
    log(
        f"[manifest] {table.num_rows} objects, layout {labelled.layout}, {len(problems)} listing problems,"
        f" {len(listing.skipped)} sidecar files skipped, {len(labelled.dropped_duplicates)} PNGs shadowed by DICOM"
    )
    return Manifest(
        table, labelled.layout, problems, listing.skipped, labelled.dropped_duplicates, digest, listing_digest, changes
    )


def write_manifest(fs, base: str, table: pa.Table, meta: dict) -> None:
    """manifest.parquet, then manifest.json (last: a manifest.json names a whole table)."""
    fs.makedirs(base, exist_ok=True)
    with fs.open(f"{base}/manifest.parquet", "wb") as fh:
        pq.write_table(table, fh)
    write_json_at(fs, f"{base}/manifest.json", meta, indent=1)


def _log_changes(changes: dict, kept: int, log=print) -> None:
    new = f" (new: {', '.join(changes['new_names'])}{' ...' if changes['new'] > 5 else ''})" if changes["new"] else ""
    log(
        f"[manifest] the source changed since the last run: {changes['new']} new, {changes['changed']} changed,"
        f" {changes['removed']} removed objects; {kept} finished chunks kept{new}"
    )


def _changes(previous: pa.Table, table: pa.Table) -> dict:
    before = dict(zip(previous.column("name").to_pylist(), previous.column(KEY_COLUMN).to_pylist()))
    after = dict(zip(table.column("name").to_pylist(), table.column(KEY_COLUMN).to_pylist()))
    new = sorted(n for n in after if n not in before)
    return {
        "new": len(new),
        "changed": sum(1 for n, k in after.items() if n in before and before[n] != k),
        "removed": sum(1 for n in before if n not in after),
        "new_names": new[:5],
    }


def _schema() -> pa.Schema:
    types = {"size": pa.int64(), "label": pa.int8(), "lesion": pa.int8(), CHUNK_COLUMN: pa.int32()}
    return pa.schema([(name, types.get(name, pa.string())) for name in [*MANIFEST_COLUMNS, KEY_COLUMN, CHUNK_COLUMN]])
