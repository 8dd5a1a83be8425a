"""DICOM SEG and SR of scored series, stored back in a real PACS (Orthanc) and read back from it."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace

import highdicom as hd
import numpy as np
import pyarrow.parquet as pq
import pytest

from strokeray.io.dicomweb import MODALITY, SERIES_UID, SOP_UID, first_value, retrieve_instance, search, session
from strokeray.stages.score import ScoreConfig, run_score, source_mask

from ..conftest import tiny_bundle

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def delivered(pacs, ray_local, tmp_path_factory):
    """The PACS scored with every slice positive (threshold 0), SEG and SR stored back and written."""
    root = tmp_path_factory.mktemp("dicom-results")
    bundles = tiny_bundle(root / "cls", "classify"), tiny_bundle(root / "seg", "segment")
    out, folder = root / "out", root / "dicom"
    cfg = ScoreConfig(threshold=0.0, dicom_out=str(folder), dicom_store=pacs.server.http + "/dicom-web")
    s = run_score(pacs.server.dicomweb, str(out), *bundles, registry=None, cfg=cfg, log=lambda *_: None)
    return s, out, folder, bundles, cfg


def _derived(pacs) -> dict[str, list[dict]]:
    """Every SEG and SR instance the PACS holds, by modality (QIDO-RS)."""
    http, found = session(), {"SEG": [], "SR": []}
    for study in search(http, pacs.server.http + "/dicom-web/studies"):
        uid = first_value(study, "0020000D")
        for inst in search(
            http, f"{pacs.server.http}/dicom-web/studies/{uid}/instances", {"includefield": f"{MODALITY},{SERIES_UID}"}
        ):
            if first_value(inst, MODALITY) in found:
                found[first_value(inst, MODALITY)].append({"study": uid, **inst})
    return found


def _retrieve(pacs, inst: dict) -> bytes:
    url = (
        f"{pacs.server.http}/dicom-web/studies/{inst['study']}/series/{first_value(inst, SERIES_UID)}"
        f"/instances/{first_value(inst, SOP_UID)}"
    )
    return retrieve_instance(session(), url, 1 << 30)


def test_every_positive_series_gets_a_report_and_its_lesions_a_segmentation(delivered, pacs):
    s, out, folder, _, _ = delivered
    studies = pq.read_table(out / "studies.parquet").to_pylist()
    positive = sum(r["decision"] for r in studies)
    assert positive == len(studies) == 22  # threshold 0: every series
    assert s.dicom["positive_series"] == 22 and not s.dicom["failed"], s.dicom["failed"]
    # The anonymised RSNA slices carry no Frame of Reference, which a SEG must have: their series
    # get the SR and the reason; the phantom series (with one) get their SEG.
    assert s.dicom["reports"] == 22 and s.dicom["segmentations"] == 2
    no_seg = s.dicom["without_segmentation"]
    assert len(no_seg) == 20 and all("Frame Of Reference" in n["reason"] for n in no_seg)
    found = _derived(pacs)
    assert len(found["SR"]) == 22 and len(found["SEG"]) == s.dicom["segmentations"]
    assert len(list(folder.glob("*.dcm"))) == 22 + s.dicom["segmentations"]
    # OUT stays pseudonymous: the objects' UIDs are in the folder and the PACS, not in OUT.
    text = (out / "dicom.json").read_text()
    assert not any(uid in text for uid in pacs.uids)


def test_the_segmentation_lies_on_the_source_pixels_and_references_them(delivered, pacs):
    _, out, _, _, _ = delivered
    slices = pq.read_table(out / "slices.parquet").to_pylist()
    manifest = pq.read_table(out / "manifest.parquet", columns=["name", "uri"]).to_pydict()
    sop_of = {n: u.rsplit("/", 1)[1] for n, u in zip(manifest["name"], manifest["uri"])}
    row_of_sop = {sop_of[r["source"]]: r for r in slices}
    checked = 0
    for inst in _derived(pacs)["SEG"]:
        seg = hd.seg.segread(io.BytesIO(_retrieve(pacs, inst)))
        sources = [uids[2] for uids in seg.get_source_image_uids()]
        assert sources and all(uid in pacs.uids for uid in sources)  # they resolve to the uploaded CT
        for sop in sources:
            expected = source_mask(row_of_sop[sop])
            for item in seg.SegmentSequence:
                cls = 1 if item.SegmentLabel.startswith("Ischemic") else 2
                got = seg.get_pixels_by_source_instance(
                    [sop], segment_numbers=[int(item.SegmentNumber)], combine_segments=False
                )[0, :, :, 0]
                assert got.shape == expected.shape
                assert np.array_equal(got.astype(bool), expected == cls)
                checked += 1
    assert checked >= 1


def test_the_report_states_the_series_probability_and_decision(delivered, pacs):
    _, out, _, _, _ = delivered
    studies = pq.read_table(out / "studies.parquet").to_pylist()
    probabilities = sorted(round(r["max_probability"], 5) for r in studies)
    reported = []
    for inst in _derived(pacs)["SR"]:
        sr = hd.sr.srread(io.BytesIO(_retrieve(pacs, inst)))
        groups = sr.content.get_image_measurement_groups()
        assert len(groups) == 1
        (m,) = groups[0].get_measurements()
        reported.append(round(float(m.value), 5))
        (q,) = groups[0].get_qualitative_evaluations()
        assert q.value.meaning == "Present"
    assert sorted(reported) == probabilities


def test_a_rerun_stores_nothing_twice(delivered, pacs, ray_local):
    """Delivered series are skipped; and objects delivered again (their records lost, as when a run
    is killed between storing and recording) keep their UIDs, so the PACS still holds one of each."""
    s, out, folder, bundles, cfg = delivered
    before = {k: sorted(first_value(i, SOP_UID) for i in v) for k, v in _derived(pacs).items()}
    again = run_score(pacs.server.dicomweb, str(out), *bundles, registry=None, cfg=cfg, log=lambda *_: None)
    assert again.reused and again.dicom["already"] == 22 and again.dicom["delivered"] == 0
    shutil.rmtree(out / "_state" / "dicom")
    redo = run_score(pacs.server.dicomweb, str(out), *bundles, registry=None, cfg=cfg, log=lambda *_: None)
    assert redo.dicom["delivered"] == 22
    # A record cut short (a process killed while writing it, before records were written whole):
    # that series is delivered again, not the run stopped by an unreadable record.
    sorted((out / "_state" / "dicom").glob("*.json"))[0].write_bytes(b"")
    cut = run_score(pacs.server.dicomweb, str(out), *bundles, registry=None, cfg=cfg, log=lambda *_: None)
    assert (cut.dicom["delivered"], cut.dicom["already"]) == (1, 21)
    after = {k: sorted(first_value(i, SOP_UID) for i in v) for k, v in _derived(pacs).items()}
    assert after == before


def test_a_pacs_that_cannot_take_the_results_stops_the_run_resumably(delivered, pacs, ray_local):
    """Scores stay complete; the delivery stops with a clear error (another destination is a new
    delivery: what went to the first one is not skipped for it)."""
    from strokeray.io.sources import SourceUnavailable
    from strokeray.stages.runtime import free_port

    _, out, _, bundles, cfg = delivered
    dead = replace(cfg, dicom_out=None, dicom_store=f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(SourceUnavailable, match="re-run the same command to deliver the rest"):
        run_score(pacs.server.dicomweb, str(out), *bundles, registry=None, cfg=dead, log=lambda *_: None)


def test_the_dicom_folder_may_not_be_inside_the_pseudonymous_output(tmp_path):
    cfg = ScoreConfig(dicom_out=str(tmp_path / "out" / "dicom"))
    with pytest.raises(ValueError, match="OUT stays pseudonymous"):
        run_score(str(tmp_path), str(tmp_path / "out"), "cls", "seg", registry=None, cfg=cfg)


def test_a_driver_killed_while_storing_results_leaves_no_duplicate_after_a_rerun(pacs, tmp_path):
    """SIGKILL the scoring driver (and its Ray) once the PACS holds its first SR; the same command
    again stores the rest, and the PACS holds exactly one SEG and one SR per series it should."""
    import os
    import signal
    import subprocess
    import time

    from strokeray.io.dicomweb import store_instances

    from ..conftest import score_command
    from ..orthanc import start_orthanc

    server = start_orthanc(tmp_path / "orthanc")
    proc = None
    try:
        store_instances(session(), server.stow, [p.read_bytes() for p in sorted(pacs.folder.iterdir())])
        bundles = tiny_bundle(tmp_path / "cls", "classify"), tiny_bundle(tmp_path / "seg", "segment")
        out = tmp_path / "out"
        cmd = [
            *score_command(server.dicomweb, out, bundles, files_per_chunk=40),
            "--dicom-store",
            server.http + "/dicom-web",
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        holder = type("P", (), {"server": server})()
        http, deadline = session(), time.time() + 300
        # One QIDO-RS request a poll (instance level, all studies): the kill lands while storing.
        while time.time() < deadline and proc.poll() is None:
            if search(http, server.http + "/dicom-web/instances", {"Modality": "SR"}):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it stored anything: nothing was interrupted"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        first = _derived(holder)
        assert 1 <= len(first["SR"]) < 22 and not (out / "dicom.json").exists(), len(first["SR"])
        print(f"killed with {len(first['SR'])} of 22 reports stored")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        found = _derived(holder)
        assert len(found["SR"]) == 22 and len(found["SEG"]) == 2
        assert len({first_value(i, SOP_UID) for i in found["SR"] + found["SEG"]}) == 24
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.stop()
