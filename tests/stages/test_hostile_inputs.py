"""A hostile-input corpus through ingest, score and preview: every file ends as a row or a
quarantine row with a reason, nothing outside OUT is touched, one patient never spans two splits,
copies are marked, and a source that changes is processed incrementally."""

from __future__ import annotations

import csv
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from strokeray.imaging.windows import BRAIN, apply_window
from strokeray.io.dicom_encode import uid_from
from strokeray.io.raster import encode_png
from strokeray.stages.ingest import IngestConfig, run_ingest
from strokeray.stages.preview import run_preview
from strokeray.stages.score import ScoreConfig, run_score

from ..conftest import corrupt_zip_member, tiny_bundle
from ..io.dicom_factory import ct_bytes, edit, head_like

pytestmark = pytest.mark.ray
QUIET = {"log": lambda *_: None}


def _dcm(seed: int, pid: str, uid: str) -> bytes:
    return ct_bytes(
        head_like((128, 128), seed=seed),
        pid=pid,
        sop_uid=uid_from(uid),
        name="Hostile^Patient",
        study_uid=uid_from(f"{pid}/study"),
        series_uid=uid_from(f"{pid}/series"),
    )


def build_corpus(root: Path) -> tuple[Path, Path, dict[str, str]]:
    """(source, a folder outside it, {file name under the source: the expected outcome})."""
    src, outside = root / "src", root / "outside"
    for d in (src / "leak", src / "a", src / "b", outside):
        d.mkdir(parents=True)
    expect: dict[str, str] = {}
    # One patient whose file names look like eight patients under the <patient>_<slice> rule.
    for i in range(1, 9):
        (src / "leak" / f"{i}_0.dcm").write_bytes(_dcm(i, "MRN-LEAK", f"leak{i}"))
        expect[f"leak/{i}_0.dcm"] = "row"
    # Byte-identical copies: DICOM and PNG, one of them named like a spreadsheet formula.
    copy = _dcm(20, "MRN-COPY", "copy")
    png = encode_png(apply_window(head_like((128, 128), seed=21), BRAIN))
    for name, data in (
        ("a/copy.dcm", copy),
        ("b/copy.dcm", copy),
        ("a/slice.png", png),
        ("b/slice.png", png),
        ("=HYPERLINK(1).png", png),
    ):
        (src / name).write_bytes(data)
        expect[name] = "row"
    # 5 KB of RLE claiming 4096 frames of 65535 x 65535.
    (src / "bomb.dcm").write_bytes(edit(ct_bytes(syntax="rle"), Rows=65535, Columns=65535, NumberOfFrames=4096))
    expect["bomb.dcm"] = "oversized_image"
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((128, 128)) > 0.5).convert("1").save(buf, format="PNG")
    (src / "noise.png").write_bytes(buf.getvalue())
    expect["noise.png"] = "not_ct"
    with open(os.path.join(os.fsencode(src), b"name\xff.dcm"), "wb") as fh:
        fh.write(_dcm(30, "MRN-NAME", "name"))
    expect["name\\xff.dcm"] = "unsafe_name"
    os.mkfifo(src / "pipe.dcm")
    (src / "zero.dcm").symlink_to("/dev/zero")
    (src / "dangling.dcm").symlink_to(root / "gone")
    expect.update({"pipe.dcm": "not_regular_file", "zero.dcm": "not_regular_file", "dangling.dcm": "not_regular_file"})
    # An archive: a good member, a bad CRC, a broken deflate stream, a name chaining outside.
    with zipfile.ZipFile(outside / "other.zip", "w") as zf:
        zf.writestr("secret.dcm", _dcm(40, "MRN-SECRET", "secret"))
    with zipfile.ZipFile(src / "z.zip", "w") as zf:
        zf.writestr("good.dcm", _dcm(41, "MRN-ZIP", "zipgood"))
        zf.writestr(zipfile.ZipInfo("crc.dcm"), _dcm(42, "MRN-ZIP", "zipcrc"))
        zf.writestr(
            zipfile.ZipInfo("deflate.dcm"), _dcm(43, "MRN-ZIP", "zipdeflate"), compress_type=zipfile.ZIP_DEFLATED
        )
        zf.writestr(f"secret.dcm::{outside / 'other.zip'}", b"decoy")
    corrupt_zip_member(src / "z.zip", "crc.dcm")
    corrupt_zip_member(src / "z.zip", "deflate.dcm")
    expect.update(
        {
            "z.zip/good.dcm": "row",
            "z.zip/crc.dcm": "corrupt_archive",
            "z.zip/deflate.dcm": "corrupt_archive",
            f"z.zip/secret.dcm::{outside / 'other.zip'}": "unsafe_member",
        }
    )
    with tarfile.open(src / "t.tar", "w") as tf:
        for name, data in (
            ("good.dcm", _dcm(44, "MRN-TAR", "targood")),
            (b"bad\xfe.dcm".decode("utf-8", "surrogateescape"), b"x"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    expect.update({"t.tar/good.dcm": "row", "t.tar/bad\\xfe.dcm": "unsafe_member"})
    return src, outside, expect


def tree_state(root: Path, skip: Path) -> dict[str, tuple]:
    state = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirs[:] = []
            continue
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            state[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def outcome_of(name: str, rows: set[str], quarantine: list[dict]) -> str | None:
    """The row or quarantine reason a file name got (quarantine sources may be full URLs)."""
    if name in rows:
        return "row"
    member = name.split("/", 1)[1] if name.startswith(("z.zip/", "t.tar/")) else None
    for q in quarantine:
        src = q["source"]
        if (
            src == name
            or src.endswith("/" + name)
            or (member and src.startswith(("zip://", "tar://")) and src.split("://", 1)[1].startswith(member + "::"))
        ):
            return q["reason"]
    return None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    src, outside, expect = build_corpus(root)
    return root, src, outside, expect


@pytest.fixture(scope="module")
def ingested(corpus, ray_local):
    root, src, _, _ = corpus
    out = root / "ingest"
    before = tree_state(root, out)
    summary = run_ingest(str(src), str(out), IngestConfig(files_per_chunk=8, files_per_task=4), **QUIET)
    return out, summary, before


def test_ingest_gives_every_file_a_row_or_a_reason(corpus, ingested):
    root, _, _, expect = corpus
    out, summary, before = ingested
    shards = pq.read_table(sorted((out / "shards").glob("*.parquet")), columns=["source", "split", "patient", "id"])
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    got = {name: outcome_of(name, set(shards.column("source").to_pylist()), quarantine) for name in expect}
    assert got == expect
    assert shards.num_rows == sum(v == "row" for v in expect.values())
    assert len(quarantine) == sum(v != "row" for v in expect.values())
    assert tree_state(root, out) == before  # nothing outside OUT was touched
    assert not (out / "_state" / "runs").exists()  # no scratch left behind


def test_one_patient_never_spans_two_splits(ingested):
    out, _, _ = ingested
    t = pq.read_table(sorted((out / "shards").glob("*.parquet")), columns=["source", "split"]).to_pylist()
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    leak = [r for r in manifest if r["name"].startswith("leak/")]
    assert {r["group_rule"] for r in leak} == {"dicom_patient_id"} and len({r["group"] for r in leak}) == 1
    assert len({r["split"] for r in t if r["source"].startswith("leak/")}) == 1


def test_patient_keys_read_in_the_driver_and_by_ray_agree(corpus, ray_local, tmp_path, monkeypatch):
    from strokeray.stages import manifest as mf

    _, src, _, _ = corpus
    groups = []
    for limit in (0, 10**6):  # every header through Ray Data; every header in the driver
        monkeypatch.setattr(mf, "LOCAL_HEADER_READS", limit)
        m = mf.build_manifest(str(src), str(tmp_path / f"m{limit}"), mf.ManifestConfig(), log=lambda *_: None)
        groups.append({r["name"]: (r["group"], r["group_rule"]) for r in m.table.to_pylist()})
    assert groups[0] == groups[1]
    assert [g for name, g in groups[0].items() if name.startswith("leak/")][0][1] == "dicom_patient_id"


def test_score_and_preview_take_the_same_corpus(corpus, ingested, tmp_path):
    root, src, _, expect = corpus
    _, ingest_summary, _ = ingested
    cls = tiny_bundle(tmp_path / "cls", "classify")
    out = root / "score"
    before = tree_state(root, out)
    s = run_score(str(src), str(out), cls, registry=None, segment=False, cfg=ScoreConfig(threshold=0.5), **QUIET)
    assert tree_state(root, out) == before
    assert s.slices == ingest_summary.slices and s.quarantined == ingest_summary.quarantined
    slices = pq.read_table(out / "slices.parquet").to_pylist()
    copies = {r["source"]: r["duplicate_of"] for r in slices if r["duplicate_of"]}
    assert copies == {
        "b/copy.dcm": "a/copy.dcm",
        "a/slice.png": "=HYPERLINK(1).png",
        "b/slice.png": "=HYPERLINK(1).png",
    }
    rows = list(csv.reader((out / "submission.csv").read_text().splitlines()))[1:]
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == s.slices
    assert {"a/copy", "b/copy", "a/slice", "b/slice", "'=HYPERLINK(1)"} <= set(ids)
    assert not any(i.startswith(("=", "+", "-", "@")) for i in ids)
    # A copy counts once in its study.
    studies = pq.read_table(out / "studies.parquet").to_pylist()
    copy_study = [r for r in slices if r["source"] == "a/copy.dcm"][0]["study"]
    assert [r["slices"] for r in studies if r["study"] == copy_study] == [1]
    pv = run_preview(str(src), str(root / "preview"))
    assert (pv.slices, pv.quarantined) == (ingest_summary.slices, ingest_summary.quarantined)


def test_a_changed_source_is_processed_incrementally(tmp_path, ray_local):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"s{i}.dcm").write_bytes(_dcm(i, f"MRN-{i}", f"inc{i}"))
    out = tmp_path / "out"
    cfg = IngestConfig(files_per_chunk=3, files_per_task=3)
    first = run_ingest(str(src), str(out), cfg, **QUIET)
    assert (first.slices, first.chunks_done) == (6, 2)
    (src / "s6.dcm").write_bytes(_dcm(6, "MRN-6", "inc6"))
    lines: list[str] = []
    added = run_ingest(str(src), str(out), cfg, log=lines.append)
    assert (added.slices, added.chunks_done, added.chunks_skipped) == (7, 1, 2)
    assert any("1 new, 0 changed, 0 removed" in line and "s6.dcm" in line for line in lines)
    (src / "s0.dcm").unlink()  # chunk 0 lost a member: its other two rows are redone, nothing else
    removed = run_ingest(str(src), str(out), cfg, **QUIET)
    assert (removed.slices, removed.chunks_done, removed.chunks_skipped) == (6, 1, 2)
    sources = pq.read_table(sorted((out / "shards").glob("*.parquet")), columns=["source"]).column("source").to_pylist()
    assert sorted(sources) == [f"s{i}.dcm" for i in range(1, 7)]
    # A chunk cut off while being promoted, whose rows have since moved to other chunks.
    shard = sorted((out / "shards").glob("*.parquet"))[0]
    (out / "shards" / "chunk-00099-000.parquet").write_bytes(shard.read_bytes())
    again = run_ingest(str(src), str(out), cfg, **QUIET)
    assert (again.chunks_done, again.slices) == (0, 6)
    assert not (out / "shards" / "chunk-00099-000.parquet").exists()
