"""Ray Data ingest on phantom archives, real CT and object storage."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from strokeray.cli import main
from strokeray.datasets.layouts import LabelsTable
from strokeray.datasets.splits import SplitConfig
from strokeray.io.shard_schema import SCALAR_COLUMNS, TENSOR_COLUMNS, stored_layout, tensor_array
from strokeray.stages.ingest import IngestConfig, run_ingest
from strokeray.stages.manifest import ManifestConfig, build_manifest
from strokeray.stages.runtime import with_tensors

from ..conftest import kill_after_first_chunk, shared_data, zip_folder

pytestmark = pytest.mark.ray


def shards(out: Path):
    return with_tensors(pq.read_table(sorted((out / "shards").glob("*.parquet"))))


@pytest.fixture(scope="module")
def ingested(planted_zip, ray_local, tmp_path_factory):
    target, summary = planted_zip
    out = tmp_path_factory.mktemp("ingest") / "out"
    s = run_ingest(str(target), str(out), IngestConfig(files_per_chunk=16, files_per_task=4))
    return out, s, summary


def test_every_good_slice_once_every_bad_file_once(ingested):
    out, s, summary = ingested
    planted_ok = sum(p["expect"] == "ok" for p in summary.planted)
    planted_bad = sorted(p["expect"] for p in summary.planted if p["expect"] != "ok")
    t = shards(out)
    ids = t.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == summary.slices + planted_ok
    q = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert sorted(r["reason"] for r in q if r["stage"] != "list") == planted_bad
    assert [r["reason"] for r in q if r["stage"] == "list"] == ["unsafe_member"]
    assert len(q) == len(planted_bad) + 1
    card = json.loads((out / "card.json").read_text())
    assert card["slices"] == len(ids) and card["quarantined"] == len(q) and card["duplicate_ids"] == 0
    assert card["layout"] == "teknofest" and card["shadowed_by_dicom"] == summary.slices
    assert sum(v["slices"] for v in card["per_split"].values()) == len(ids)
    assert s.chunks_done >= 2  # 16 files per chunk: the archive spans several chunks


def test_shard_schema_and_contents(ingested):
    out, _, summary = ingested
    t = shards(out)
    row = t.slice(0, 1).to_pylist()[0]
    # The shards hold exactly the columns the schema module documents, in its order.
    assert t.column_names == [*SCALAR_COLUMNS, *TENSOR_COLUMNS]
    import ray

    # Stored one fixed-size binary value a row, the shape in the field; read back as tensors.
    raw = pq.read_table(sorted((out / "shards").glob("*.parquet"))[0])
    layouts = {name: stored_layout(raw.schema.field(name)) for name in TENSOR_COLUMNS}
    assert layouts == {
        "cls_image": ((3, 224, 224), np.uint8),
        "seg_image": ((3, 256, 256), np.uint8),
        "seg_mask": ((256, 256), np.uint8),
    }
    as_tensors = with_tensors(raw).to_pylist()
    assert as_tensors[0]["seg_image"].shape == (3, 256, 256)
    assert np.array_equal(tensor_array(raw["seg_image"], (3, 256, 256)), np.stack([r["seg_image"] for r in as_tensors]))
    ds = ray.data.read_parquet(str(out / "shards")).map_batches(with_tensors, batch_format="pyarrow")
    batch = ds.take_batch(4, batch_format="numpy")
    assert batch["cls_image"].shape == (4, 3, 224, 224) and batch["cls_image"].dtype == np.uint8
    assert batch["seg_mask"].shape == (4, 256, 256)
    masked = t.filter(t.column("has_mask")).to_pylist()
    assert len(masked) == sum(v for k, v in summary.per_class.items() if k != "Non-Stroke")
    for r in masked:
        m = np.asarray(r["seg_mask"])
        assert set(np.unique(m)) <= {0, r["lesion"]} and (m == r["lesion"]).any()
    splits_of = {}
    for p, s in zip(t.column("patient").to_pylist(), t.column("split").to_pylist()):
        splits_of.setdefault(p, set()).add(s)
    assert all(len(v) == 1 for v in splits_of.values())
    assert row["thickness_mm"] == 5.0


def test_no_phi_anywhere(ingested):
    out, _, _ = ingested
    blobs = [(out / "card.json").read_bytes(), (out / "manifest.json").read_bytes()]
    for path in [*out.glob("shards/*.parquet"), out / "quarantine.parquet", out / "manifest.parquet"]:
        table = pq.read_table(path)
        for name in table.column_names:
            if str(table.schema.field(name).type) == "string":
                blobs.append("\n".join(v or "" for v in table.column(name).to_pylist()).encode())
    text = b"\n".join(blobs)
    assert b"Phantom^" not in text and b"SYN3-" not in text and b"Patient0" not in text


def test_rerun_adds_nothing_and_other_settings_refuse(ingested, planted_zip):
    out, first, _ = ingested
    target, _ = planted_zip
    before = sorted(shards(out).column("id").to_pylist())
    again = run_ingest(str(target), str(out), IngestConfig(files_per_chunk=16, files_per_task=4))
    assert again.chunks_done == 0 and again.chunks_skipped == first.chunks_done
    assert sorted(shards(out).column("id").to_pylist()) == before
    with pytest.raises(ValueError, match="other inputs or settings"):
        run_ingest(str(target), str(out), IngestConfig(files_per_chunk=7))


def test_interrupted_ingest_resumes_to_the_same_rows(planted_zip, ingested, tmp_path):
    target, _ = planted_zip
    reference = sorted(shards(ingested[0]).column("id").to_pylist())
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "strokeray.cli",
        "ingest",
        str(target),
        str(out),
        "--files-per-chunk",
        "16",
        "--files-per-task",
        "4",
        "--num-cpus",
        "1",
    ]
    kill_after_first_chunk(cmd, out)
    assert not (out / "card.json").exists()
    done = run_ingest(str(target), str(out), IngestConfig(files_per_chunk=16, files_per_task=4))
    assert done.chunks_skipped >= 1
    assert sorted(shards(out).column("id").to_pylist()) == reference


def test_a_done_record_cut_short_redoes_its_chunk(planted_zip, ingested, tmp_path):
    """A chunk's done record left empty (its writer killed mid-write, before records were written
    whole): the rerun redoes that chunk instead of failing on the record, and the rows are the same."""
    import shutil

    target, _ = planted_zip
    out = tmp_path / "cut"
    shutil.copytree(ingested[0], out)
    (out / "card.json").unlink()  # unfinished, so the rerun resumes
    records = sorted((out / "_state" / "done").glob("chunk-*.json"))
    records[1].write_bytes(b"")
    done = run_ingest(str(target), str(out), IngestConfig(files_per_chunk=16, files_per_task=4))
    assert (done.chunks_done, done.chunks_skipped) == (1, len(records) - 1)
    assert sorted(shards(out).column("id").to_pylist()) == sorted(shards(ingested[0]).column("id").to_pylist())


def test_cli_ingest_exit_code_and_counts(phantom_archive, ray_local, tmp_path, capsys):
    root, summary = phantom_archive
    assert main(["ingest", str(root), str(tmp_path / "o"), "--files-per-task", "8"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["quarantined"] == sum(p["expect"] != "ok" for p in summary.planted)
    assert printed["slices"] == summary.slices + sum(p["expect"] == "ok" for p in summary.planted)


@pytest.mark.realdata
def test_rsna_folder_zip_and_tar_give_the_same_shards(ray_local, tmp_path):
    root = shared_data("rsna-ich-dicom-20")
    folder = root / "Major Project ICH Detection"
    zipped = zip_folder(root, tmp_path / "rsna.zip")
    tarred = tmp_path / "rsna.tar"
    with tarfile.open(tarred, "w") as tf:
        tf.add(folder, arcname="Major Project ICH Detection")
    results = {}
    for name, src in (("folder", root), ("zip", zipped), ("tar", tarred)):
        out = tmp_path / f"out-{name}"
        run_ingest(str(src), str(out), IngestConfig())
        t = shards(out).sort_by("id")
        results[name] = t
        assert t.num_rows == 20
    ref = results["folder"]
    for name in ("zip", "tar"):
        t = results[name]
        assert t.column("id").to_pylist() == ref.column("id").to_pylist()
        assert t.column("patient").to_pylist() == ref.column("patient").to_pylist()
        assert np.array_equal(np.stack(t.column("cls_image").to_numpy()), np.stack(ref.column("cls_image").to_numpy()))
        assert t.column("split").to_pylist() == ref.column("split").to_pylist()
    assert len(set(ref.column("patient").to_pylist())) == 20  # one patient per slice, from PatientID


@pytest.mark.realdata
def test_ctich_patient_grouped_ingest(ray_local, tmp_path):
    root = shared_data("ctich-kaggle-strokect")
    out = tmp_path / "ctich"
    run_ingest(str(root), str(out), IngestConfig(files_per_chunk=1300))
    card = json.loads((out / "card.json").read_text())
    assert card["layout"] == "class_folders" and card["slices"] == 2501 and card["quarantined"] == 0
    labels = {}
    for split in card["per_split"].values():
        for k, v in split["label"].items():
            labels[k] = labels.get(k, 0) + v
    assert (
        labels
        == {
            "0": len(list((root / "Dataset" / "Normal").glob("*.jpg"))),
            "1": len(list((root / "Dataset" / "Stroke").glob("*.jpg"))),
        }
        == {"0": 1551, "1": 950}
    )
    t = pq.read_table(sorted((out / "shards").glob("*.parquet")), columns=["source", "patient", "split"])
    split_of: dict[str, set] = {}
    for p, s in zip(t.column("patient").to_pylist(), t.column("split").to_pylist()):
        split_of.setdefault(p, set()).add(s)
    assert len(split_of) == 82 and all(len(v) == 1 for v in split_of.values())
    assert card["brain_found"] > 0.85 * 2501
    full = [sh for sh in card["shards"] if sh["rows"] == 128]  # all but each chunk's tail
    assert len(full) >= 2 * 2501 // 128 // 2
    assert all(10e6 < sh["bytes"] < 80e6 for sh in full)  # tens of MB: made for streaming


@pytest.mark.realdata
def test_ctich_dicom_mask_pairs_ingest_to_masked_shards_and_the_density_baseline_scores_them(
    ray_local, tmp_path, capsys
):
    """The 26 CT-ICH image/mask DICOM pairs through the ingest command: masked shards of 16 patients,
    then the training-free density baseline through evaluate on every split, with patient intervals."""
    root = shared_data("ctich-dicom-masks-26")
    out = tmp_path / "masks"
    assert main(["ingest", str(root), str(out), "--mask-lesion", "hemorrhagic"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert (card["slices"], card["with_mask"], card["patients"], card["quarantined"]) == (26, 26, 16, 0)
    capsys.readouterr()
    assert main(["evaluate", "density:50", str(out), "--split", "all"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    value, low, high = doc["intervals"]["iou_hemorrhagic"]
    assert doc["slices"] == 26 and low < value < high and value == pytest.approx(doc["metrics"]["iou_hemorrhagic"])
    assert value > 0.25  # acute blood is hyperdense: a plain 50 HU threshold finds much of it


@pytest.mark.realdata
def test_ctich_relabel_through_labels_csv(ray_local, tmp_path):
    root = shared_data("ctich-kaggle-strokect")
    cfg = ManifestConfig(
        labels=str(root / "labels.csv"),
        labels_table=LabelsTable(label_col="ctich_patient_level_status", patient_col="ctich_patient_id"),
        split=SplitConfig(mode="stratified"),
    )
    m = build_manifest(str(root), str(tmp_path / "m"), cfg, log=lambda *_: None)
    rows = m.table.to_pylist()
    flagged = [r for r in rows if r["name"].startswith("Dataset/Normal/") and r["label"] == 1]
    assert len(flagged) == 154
    assert {r["name"].split("/")[-1].split(" ")[0] for r in flagged} == {"49", "50", "51", "52", "53"}
    split_of: dict[str, set] = {}
    for r in rows:
        split_of.setdefault(r["group"], set()).add(r["split"])
    assert len(split_of) == 82 and all(len(v) == 1 for v in split_of.values())
    tests = {r["group"] for r in rows if r["split"] == "test"}
    assert any(r["label"] == 1 for r in rows if r["group"] in tests)
    assert any(r["label"] == 0 for r in rows if r["group"] in tests)


def test_s3_in_and_out(phantom_archive, ray_local, s3_endpoint, tmp_path):
    import fsspec

    root, summary = phantom_archive
    fs = fsspec.filesystem("s3")
    fs.mkdir("strokeray-test")
    zipped = zip_folder(root, tmp_path / "in.zip")
    fs.put(str(zipped), "strokeray-test/archives/in.zip")
    s = run_ingest("s3://strokeray-test/archives", "s3://strokeray-test/out", IngestConfig(files_per_task=8))
    assert s.slices == summary.slices + sum(p["expect"] == "ok" for p in summary.planted)
    assert fs.exists("strokeray-test/out/card.json") and fs.exists("strokeray-test/out/quarantine.parquet")
    card = json.loads(fs.cat("strokeray-test/out/card.json"))
    assert card["slices"] == s.slices and card["quarantined"] == s.quarantined
    assert len(fs.glob("strokeray-test/out/shards/*.parquet")) == len(card["shards"])


def test_decode_tasks_are_cut_for_the_cluster_the_autoscaler_can_grow_to():
    from strokeray.stages.ingest import files_per_task

    assert files_per_task(1000, 2, 128) == 128  # a laptop: the cap
    assert files_per_task(1000, 100, 64) == 5  # 200 tasks: two for every CPU the cluster can have
    assert files_per_task(1000, 0, 64) == 64  # nothing up and no autoscaler: as for one CPU
    assert files_per_task(3, 100, 64) == 1


def test_a_chunk_runs_without_ray_datas_operator_reservation_and_scoring_keeps_it(ray_local, tmp_path):
    """Ingest's one fused operator gets every CPU at once (the reservation held half back until a
    task finished); the setting is that dataset's own, so scoring's pipeline, with an actor stage,
    and any other dataset of the process keep Ray Data's default."""
    import pyarrow as pa
    import ray

    from strokeray.stages.ingest import chunk_dataset

    rows = pa.table({"uri": ["a", "b"], "name": ["a", "b"]})
    ingest_ds = chunk_dataset(rows, IngestConfig(), str(tmp_path / "q"))
    scoring_ds = chunk_dataset(rows, IngestConfig(), str(tmp_path / "q"), extend=lambda ds: ds)
    assert ingest_ds.context.op_resource_reservation_enabled is False
    assert scoring_ds.context.op_resource_reservation_enabled is True
    assert ray.data.DataContext.get_current().op_resource_reservation_enabled is True
    assert ray.data.from_items([1]).context.op_resource_reservation_enabled is True
