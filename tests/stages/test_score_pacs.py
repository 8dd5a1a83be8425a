"""Scoring straight from a real PACS (Orthanc over DICOMweb): the rows of scoring its files, no
UID in any result, and a PACS that stops answering mid-run ends it with a clear error that a re-run
resumes from."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from strokeray.io.dicomweb import session, store_instances
from strokeray.stages.score import ScoreConfig, run_score

from ..conftest import score_command, tiny_bundle
from ..orthanc import start_orthanc

pytestmark = pytest.mark.ray
RESULTS = ("slices.parquet", "studies.parquet", "submission.csv", "quarantine.parquet", "summary.json")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("bundles")
    return tiny_bundle(root / "cls", "classify"), tiny_bundle(root / "seg", "segment")


def _by_id(out) -> dict[str, float]:
    t = pq.read_table(out / "slices.parquet", columns=["id", "stroke_probability"]).to_pydict()
    return dict(zip(t["id"], t["stroke_probability"]))


@pytest.fixture(scope="module")
def from_files(pacs, bundles, ray_local, tmp_path_factory):
    """The reference: the same instances scored from a folder."""
    out = tmp_path_factory.mktemp("score-files") / "out"
    run_score(str(pacs.folder), str(out), *bundles, registry=None, cfg=ScoreConfig(threshold=0.0), log=lambda *_: None)
    return out


def test_a_pacs_scores_like_its_files_and_no_uid_reaches_the_results(pacs, bundles, from_files, ray_local, tmp_path):
    out = tmp_path / "out"
    cfg = ScoreConfig(threshold=0.0, files_per_chunk=12)
    s = run_score(pacs.server.dicomweb, str(out), *bundles, registry=None, cfg=cfg, log=lambda *_: None)
    assert s.slices == 32 and s.chunks_done == 3
    # The broken instance: quarantined with the reason scoring its file gives, under a pseudonym.
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert s.quarantined == len(quarantine) == 1
    (files_row,) = pq.read_table(from_files / "quarantine.parquet").to_pylist()
    assert quarantine[0]["reason"] == files_row["reason"] == "corrupt_pixel_data"
    assert quarantine[0]["source"].endswith(".dcm") and quarantine[0]["source"].count("/") == 2
    got, want = _by_id(out), _by_id(from_files)
    assert sorted(got) == sorted(want)
    assert np.allclose([got[i] for i in want], list(want.values()), atol=1e-5)
    studies = pq.read_table(out / "studies.parquet")
    assert studies.num_rows == pq.read_table(from_files / "studies.parquet").num_rows == 22  # 20 RSNA + 2 phantom
    for name in RESULTS:
        text = (out / name).read_bytes().decode("latin-1")
        leaked = sorted(uid for uid in pacs.uids if uid in text)
        assert not leaked, f"{name} holds real UIDs: {leaked[:3]}"


def test_a_pacs_that_stops_mid_run_fails_it_clearly_and_a_rerun_resumes(pacs, bundles, from_files, tmp_path):
    """Orthanc is stopped once the first chunk is done: the run exits 3 naming the server and keeps
    that chunk; with the PACS back (same storage and port), the same command finishes the rest."""
    server = start_orthanc(tmp_path / "orthanc")
    try:
        store_instances(session(), server.stow, [p.read_bytes() for p in sorted(pacs.folder.iterdir())])
        out = tmp_path / "out"
        cmd = score_command(server.dicomweb, out, bundles, files_per_chunk=8)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        marker = out / "_state" / "done" / "chunk-00000.json"
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the first chunk never finished"
        server.stop()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 3, err[-3000:]
        assert "server unavailable" in err and "did not answer" in err and "re-run the same command" in err
        assert not (out / "summary.json").exists()

        server = start_orthanc(tmp_path / "orthanc", port=server.port)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        got, want = _by_id(out), _by_id(from_files)
        assert sorted(got) == sorted(want)  # every slice exactly once
        assert '"chunks_skipped": 1' in done.stdout or '"chunks_skipped": 2' in done.stdout
    finally:
        server.stop()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_ingest_reads_a_pacs_like_its_files(pacs, ray_local, tmp_path):
    """The same slices, patients and splits (patient keys come from the headers either way)."""
    from strokeray.stages.ingest import IngestConfig, run_ingest

    def shards(src: str, out) -> dict:
        run_ingest(src, str(out), IngestConfig(), log=lambda *_: None)
        t = pq.read_table(out / "shards", columns=["id", "patient", "split"]).to_pydict()
        return {i: (p, s) for i, p, s in zip(t["id"], t["patient"], t["split"])}

    from_pacs = shards(pacs.server.dicomweb, tmp_path / "pacs")
    assert len(from_pacs) == 32
    assert from_pacs == shards(str(pacs.folder), tmp_path / "files")
