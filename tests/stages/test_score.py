"""Batch scoring: a phantom zip with planted bad files, a killed actor, a killed driver, real DICOM."""

from __future__ import annotations

import csv
import json
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from strokeray.imaging.rle import decode_rle
from strokeray.io.raster import decode_image
from strokeray.stages import registry
from strokeray.stages.score import ScoreConfig, run_score, source_mask

from ..conftest import kill_after_first_chunk, ray_processes, score_command, shared_data, tiny_bundle

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("bundles")
    return tiny_bundle(root / "cls", "classify"), tiny_bundle(root / "seg", "segment")


@pytest.fixture(scope="module")
def scored(planted_zip, bundles, ray_local, tmp_path_factory):
    target, summary = planted_zip
    out = tmp_path_factory.mktemp("score") / "out"
    # Threshold 0: every slice is positive, so the segmenter and the volumes are exercised.
    cfg = ScoreConfig(threshold=0.0, batch_size=8, files_per_chunk=24, overlays=True, source_masks=True)
    before = set(ray_actors())
    s = run_score(str(target), str(out), *bundles, registry=None, cfg=cfg, log=lambda *_: None)
    started = [a["ActorClassName"] for k, a in ray_actors().items() if k not in before]
    return out, s, summary, cfg, started


def ray_actors() -> dict:
    """Every actor the local Ray has had (the GCS's table: dead ones too)."""
    from ray._private import state

    return state.actors()


def test_the_models_load_once_per_run_not_per_chunk(scored):
    """Each chunk is its own Ray Data run; its tasks feed the run's one scorer, which loaded the
    bundles once (an actor pool per chunk loaded them, and started a process, once per chunk)."""
    _, s, _, _, started = scored
    assert s.chunks_done >= 2
    assert sum("CascadeScorer" in name for name in started) == 1, started


def test_gpu_batches_are_sized_by_free_memory():
    from strokeray.stages.cascade import batch_for_memory

    gib = 2**30
    assert batch_for_memory(80 * gib, 40 * 2**20) == 512  # an H100's 80 GiB: the cap
    assert batch_for_memory(8 * gib, 40 * 2**20) == 64  # 4 GiB for 40 MiB a slice: 102 -> 64
    assert batch_for_memory(gib, 40 * 2**20) == 16  # never under the CPU's batch


def test_cpu_scorers_threads_sleep_at_barriers_unless_the_user_chose(monkeypatch):
    from strokeray.stages.cascade import scorer_options

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cpu, gpu = scorer_options(1.0, False), scorer_options(1.0, True)
    assert cpu["runtime_env"] == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}} and cpu["num_gpus"] == 0
    assert "runtime_env" not in gpu and gpu["num_gpus"] == 1 and gpu["max_restarts"] == -1
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "runtime_env" not in scorer_options(1.0, False)


def test_decode_and_batch_workers_never_import_torch():
    """The Ray Data tasks of a scoring run (decoding, then the hop to the scorers) import only their
    own modules: torch there costs every worker process about 2 s of CPU and 300 MB."""
    import sys

    probe = "import sys, strokeray.stages.ingest, strokeray.stages.cascade; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_every_good_slice_scored_once_every_bad_file_quarantined(scored):
    out, s, summary, _, _ = scored
    slices = pq.read_table(out / "slices.parquet")
    ids = slices.column("id").to_pylist()
    planted_ok = sum(p["expect"] == "ok" for p in summary.planted)
    planted_bad = [p for p in summary.planted if p["expect"] != "ok"]
    assert len(ids) == len(set(ids)) == summary.slices + planted_ok == s.slices
    q = pq.read_table(out / "quarantine.parquet")
    assert q.num_rows == len(planted_bad) + 1 == s.quarantined  # + the zip-slip member
    assert "image" not in " ".join(slices.column_names)  # no pixels in the output
    row = slices.slice(0, 1).to_pylist()[0]
    assert row["classifier_version"] and row["segmenter_version"] and row["segmented"]
    mask = decode_rle(row["mask_rle"])
    assert mask.shape == (256, 256)
    assert (mask == 2).sum() == row["hemorrhagic_pixels"] and (mask == 1).sum() == row["ischemic_pixels"]
    assert row["hemorrhagic_area_mm2"] == pytest.approx(row["hemorrhagic_pixels"] * row["seg_spacing_mm"] ** 2)
    assert s.chunks_done >= 2 and len(list((out / "overlays").glob("*.png"))) == len(ids)
    # The predicted mask on the slice's own pixel grid, as a function of the row and as a file.
    on_source = source_mask(row)
    assert on_source.shape == tuple(row["source_shape"]) and len(row["seg_box"]) == 4
    assert np.array_equal(decode_image((out / "source_masks" / f"{row['id']}.png").read_bytes()), on_source)
    assert len(list((out / "source_masks").glob("*.png"))) == len(ids)
    if row["hemorrhagic_pixels"]:
        assert (on_source == 2).any()


def test_study_volumes_are_area_times_thickness(scored):
    out, _, _, _, _ = scored
    slices = pq.read_table(out / "slices.parquet").to_pylist()
    studies = pq.read_table(out / "studies.parquet").to_pylist()
    assert sum(st["slices"] for st in studies) == len(slices)
    for st in studies:
        mine = [
            r
            for r in slices
            if (r["study"] or f"patient:{r['patient']}") == st["study"] and r["series"] == st["series"]
        ]
        assert len(mine) == st["slices"]
        for kind, col in (("hemorrhage_ml", "hemorrhagic_area_mm2"), ("ischemia_ml", "ischemic_area_mm2")):
            assert st[kind] == pytest.approx(sum(r[col] * r["thickness_mm"] for r in mine) / 1000.0)
        top = max(mine, key=lambda r: r["stroke_probability"])
        assert st["max_probability"] == pytest.approx(top["stroke_probability"])
        assert st["decision"] == 1 and st["most_suspicious_id"] == top["id"]


def test_submission_and_privacy(scored):
    out, _, _, _, _ = scored
    slices = pq.read_table(out / "slices.parquet")
    with open(out / "submission.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == slices.num_rows and set(rows[0]) == {"ID", "label"}
    stems = {Path(s.split("::")[-1]).stem for s in slices.column("source").to_pylist()}
    assert {r["ID"] for r in rows} == stems and {r["label"] for r in rows} == {"1"}
    for name in ("slices.parquet", "studies.parquet", "quarantine.parquet"):
        blob = (out / name).read_bytes()
        assert b"Phantom^Patient" not in blob and b"SYN3-" not in blob  # names, raw PatientIDs


def test_finished_run_rewrites_nothing(scored, bundles, planted_zip):
    out, _, _, cfg, _ = scored
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_score(str(planted_zip[0]), str(out), *bundles, registry=None, cfg=cfg, log=lambda *_: None)
    assert again.reused and again.slices > 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match="other inputs or settings"):
        run_score(
            str(planted_zip[0]),
            str(out),
            *bundles,
            registry=None,
            cfg=ScoreConfig(threshold=0.7, files_per_chunk=24),
            log=lambda *_: None,
        )


def test_cpu_scorers_load_while_the_manifest_is_built_and_never_outlive_the_run(
    scored, bundles, planted_zip, ray_local, monkeypatch, tmp_path
):
    """A run with work ahead starts its CPU scorers before listing the source (their models load
    meanwhile); a listing that fails stops them, and a finished run starts none."""
    from strokeray.stages import manifest

    seen: list[dict] = []
    real = manifest.build_manifest

    def listing_fails(*args, **kwargs):
        seen.append(ray_actors())
        raise OSError("the source stopped answering")

    before = set(ray_actors())
    monkeypatch.setattr(manifest, "build_manifest", listing_fails)
    with pytest.raises(OSError, match="stopped answering"):
        run_score(str(planted_zip[0]), str(tmp_path / "out"), *bundles, registry=None, log=lambda *_: None)
    early = [k for k, a in seen[0].items() if k not in before and a["ActorClassName"] == "CascadeScorer"]
    assert len(early) == 1 and seen[0][early[0]]["State"] != "DEAD"
    deadline = time.time() + 30
    while ray_actors()[early[0]]["State"] != "DEAD" and time.time() < deadline:
        time.sleep(0.2)
    assert ray_actors()[early[0]]["State"] == "DEAD"  # stopped, not left holding a CPU

    monkeypatch.setattr(manifest, "build_manifest", real)
    before = set(ray_actors())
    out, _, _, cfg, _ = scored
    assert run_score(str(planted_zip[0]), str(out), *bundles, registry=None, cfg=cfg, log=lambda *_: None).reused
    assert not [a for k, a in ray_actors().items() if k not in before and a["ActorClassName"] == "CascadeScorer"]


def test_models_default_to_the_registry(planted_zip, bundles, ray_local, tmp_path):
    reg = tmp_path / "registry"
    for task in ("classify", "segment"):
        registry.publish(
            str(reg),
            task,
            lambda url, task=task: tiny_bundle(Path(url), task),
            {},
            [],
            {"metric": "m", "value": 1.0, "dataset": "d"},
        )
    s = run_score(
        str(planted_zip[0]),
        str(tmp_path / "out"),
        registry=str(reg),
        cfg=ScoreConfig(threshold=0.9),
        log=lambda *_: None,
    )
    assert s.models["classifier"].endswith("classify/v0001") and s.models["segmenter"].endswith("segment/v0001")


def test_killed_actor_loses_and_duplicates_nothing(planted_zip, bundles, scored, ray_local, tmp_path):
    reference = sorted(pq.read_table(scored[0] / "slices.parquet").column("id").to_pylist())
    killed: list[int] = []
    policies: list[str | None] = []

    def killer():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for proc in ray_processes():  # this test's Ray only
                try:
                    if "CascadeScorer" not in " ".join(proc.cmdline()):
                        continue
                    time.sleep(0.3)  # let it load the models and take a batch (one slice each)
                    policies.append(proc.environ().get("OMP_WAIT_POLICY"))
                    proc.kill()
                except psutil.NoSuchProcess:
                    continue  # gone before the kill (a fast machine): keep looking
                killed.append(proc.pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = tmp_path / "out"
    run_score(
        str(planted_zip[0]),
        str(out),
        *bundles,
        registry=None,
        cfg=ScoreConfig(threshold=0.0, batch_size=1, files_per_chunk=200),
        log=lambda *_: None,
    )
    thread.join(timeout=5)
    assert killed, "no scoring actor was found to kill"
    assert policies == ["PASSIVE"]  # a CPU scorer's torch threads sleep at barriers (cascade.scorer_options)
    assert sorted(pq.read_table(out / "slices.parquet").column("id").to_pylist()) == reference


def test_models_that_cannot_load_fail_the_run_with_their_error(planted_zip, bundles, ray_local, tmp_path):
    """The scorers load while the first chunk decodes (nothing waits for them on CPUs): a weights
    file that cannot be read must still fail the run with the loader's error, not hang it."""
    import shutil

    broken = tmp_path / "cls"
    shutil.copytree(bundles[0], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="could not load the models") as err:
        run_score(
            str(planted_zip[0]),
            str(out),
            str(broken),
            bundles[1],
            registry=None,
            cfg=ScoreConfig(),
            log=lambda *_: None,
        )
    assert "safetensors" in str(err.value).lower() or "header" in str(err.value).lower(), err.value
    assert not (out / "summary.json").exists()


def test_killed_driver_rerun_completes_exactly_once(planted_zip, bundles, scored, tmp_path):
    reference = sorted(pq.read_table(scored[0] / "slices.parquet").column("id").to_pylist())
    out = tmp_path / "out"
    cmd = score_command(str(planted_zip[0]), out, bundles, files_per_chunk=12)
    env = kill_after_first_chunk(cmd, out)
    assert not (out / "summary.json").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["chunks_skipped"] >= 1
    assert sorted(pq.read_table(out / "slices.parquet").column("id").to_pylist()) == reference


def test_real_dicom_tar_gets_a_row_per_slice(bundles, ray_local, tmp_path):
    root = shared_data("rsna-ich-dicom-20")
    tarred = tmp_path / "rsna.tar"
    with tarfile.open(tarred, "w") as tf:
        tf.add(root / "Major Project ICH Detection", arcname="Major Project ICH Detection")
    s = run_score(str(tarred), str(tmp_path / "out"), *bundles, registry=None, cfg=ScoreConfig(), log=lambda *_: None)
    slices = pq.read_table(tmp_path / "out" / "slices.parquet")
    assert s.slices == slices.num_rows == 20 and s.quarantined == 0
    prob = np.asarray(slices.column("stroke_probability"))
    assert np.all((prob >= 0) & (prob <= 1))
    # These anonymised slices carry pixel spacing but no SliceThickness: areas, but no volumes.
    assert np.isfinite(np.asarray(slices.column("seg_spacing_mm"))).all()
    assert np.isnan(np.asarray(slices.column("thickness_mm"))).all()


def test_a_run_is_not_resumed_in_other_arithmetic():
    """GPU actors score in fp16 autocast, CPU ones in fp32: the settings digest tells them apart (a
    resumed run cannot mix both), while the pool's size and batch do not change what is computed."""
    from strokeray.learn.accel import FP16_AUTOCAST, FP32, precision_name
    from strokeray.stages.score import _digest

    models = {"classifier": "c1", "segmenter": "s1"}
    cpu = _digest("m", models, ScoreConfig())
    assert _digest("m", models, ScoreConfig(use_gpu=True)) != cpu
    assert _digest("m", models, ScoreConfig(actors=3, batch_size=64, cpus_per_actor=2.0)) == cpu
    assert (precision_name("cpu"), precision_name("cuda")) == (FP32, FP16_AUTOCAST)
