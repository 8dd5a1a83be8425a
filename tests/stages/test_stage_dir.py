"""Output folders: never written into unless strokeray made them, never deleting what it did not write.

These run without Ray: every refusal happens before Ray starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strokeray.cli import main
from strokeray.stages.stage_dir import MARKER, OutputError, StageDir, overlap, settings_digest

from ..conftest import tiny_bundle


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def user_src(tmp_path) -> Path:
    """A user's folder of "DICOM" files (bytes are enough: nothing may read them)."""
    src = tmp_path / "scans"
    (src / "sub").mkdir(parents=True)
    (src / "a.dcm").write_bytes(b"patient data A")
    (src / "sub" / "b.dcm").write_bytes(b"patient data B")
    return src


def test_overlap_of_locations(tmp_path):
    assert overlap(str(tmp_path / "a"), str(tmp_path / "a")) == "is"
    assert overlap(str(tmp_path / "a" / "b"), str(tmp_path / "a")) == "is inside"
    assert overlap(str(tmp_path / "a"), str(tmp_path / "a" / "b")) == "contains"
    assert overlap(str(tmp_path / "a"), str(tmp_path / "ab")) is None
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert overlap(str(tmp_path / "link" / "x"), str(tmp_path / "real")) == "is inside"
    assert overlap("s3://bucket/a", str(tmp_path / "a")) is None


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_ingest_and_score_refuse_an_out_that_overlaps_the_source(user_src, tmp_path, capsys, where):
    out = {"same": user_src, "inside": user_src / "sub" / "out", "containing": tmp_path}[where]
    cls = tiny_bundle(tmp_path.parent / f"bundle-{where}", "classify")
    before = snapshot(tmp_path)
    assert main(["ingest", str(user_src), str(out), "--overwrite"]) == 2
    assert main(["score", str(user_src), "--out", str(out), "--classifier", cls, "--no-segmenter", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("choose an output folder outside the input") == 2 and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_a_folder_strokeray_did_not_make_is_never_written_or_cleared(user_src, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    # A user's own files with the names strokeray writes.
    for name in ("card.json", "manifest.json", "quarantine.parquet", "shards/mine.parquet"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text(f"user's {name}")
    before = snapshot(out)
    for overwrite in ([], ["--overwrite"]):
        assert main(["ingest", str(user_src), str(out), *overwrite]) == 2
        assert main(["preview", str(user_src), str(out)]) == 2
        assert main(["synth", str(out), *overwrite]) == 2
    assert "not made by strokeray" in capsys.readouterr().err
    assert snapshot(out) == before


def test_overwrite_removes_only_the_stages_own_outputs(tmp_path):
    stage = StageDir(str(tmp_path / "out"), "ingest", ("card.json", "shards", "_state"))
    assert stage.claim(digest="d1") is False
    (tmp_path / "out" / "shards").mkdir()
    (tmp_path / "out" / "shards" / "chunk-00000-000.parquet").write_bytes(b"x")
    (tmp_path / "out" / "card.json").write_text("{}")
    (tmp_path / "out" / "notes.txt").write_text("the user's, added later")
    assert stage.claim(digest="d1") is True  # same settings: resume
    assert stage.claim(digest="d1", overwrite=True) is True  # --overwrite discards only other work
    assert (tmp_path / "out" / "card.json").exists()
    with pytest.raises(OutputError, match="other inputs or settings"):
        stage.claim(digest="d2")
    assert stage.claim(digest="d2", overwrite=True) is False
    left = snapshot(tmp_path / "out")
    assert set(left) == {"notes.txt", MARKER}
    assert json.loads(left[MARKER])["digest"] == "d2"


def test_a_search_made_before_markers_is_adopted_and_overwrite_removes_only_tunes_files(tmp_path):
    from strokeray.stages.tune import PUBLISHED, SEARCH_OUTPUTS, SETTINGS

    path = tmp_path / "tune" / "classify-search"
    for name in (
        SETTINGS,
        "experiment_state-2026.json",
        "tuner.pkl",
        "trial_driver_ab_00000/result.json",
        "train/ab_00000/checkpoint/state.json",
        "notes.txt",
    ):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("x")
    stage = StageDir(str(path), "tune", SEARCH_OUTPUTS, done=PUBLISHED)
    stage.adopt(SETTINGS, "d1")  # it holds the settings file every search writes first: ours
    assert stage.claim(digest="d1") is True  # the same search: resumed
    with pytest.raises(OutputError, match="other inputs or settings"):
        stage.claim(digest="d2")
    assert stage.claim(digest="d2", overwrite=True) is False
    assert set(snapshot(path)) == {"notes.txt", MARKER}  # the user's file stays
    # A folder without a search's settings file is not adopted, so it is refused untouched.
    user = tmp_path / "mine"
    user.mkdir()
    (user / "tuner.pkl").write_text("a user's file of that name")
    StageDir(str(user), "tune", SEARCH_OUTPUTS).adopt(SETTINGS, "d1")
    with pytest.raises(OutputError, match="not made by strokeray"):
        StageDir(str(user), "tune", SEARCH_OUTPUTS).claim(digest="d1", overwrite=True)
    assert set(snapshot(user)) == {"tuner.pkl"}


def test_another_stages_output_is_refused(tmp_path):
    StageDir(str(tmp_path / "o"), "score", ("slices.parquet",)).claim(digest="x")
    with pytest.raises(OutputError, match="holds a strokeray score output"):
        StageDir(str(tmp_path / "o"), "ingest", ("card.json",)).claim(digest="x", overwrite=True)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputError, match="is a file"):
        StageDir(str(tmp_path / "f"), "ingest", ()).claim()


def test_arguments_are_checked_before_anything_starts(user_src, tmp_path, capsys):
    data = tmp_path / "nowhere"
    assert main(["train", "classify", "--data", str(data), "--epochs", "-1"]) == 2
    assert "epochs=-1" in capsys.readouterr().err
    assert main(["tune", "segment", "--data", str(data), "--max-epochs", "2", "--grace-period", "3"]) == 2
    assert "grace_period" in capsys.readouterr().err
    assert main(["ingest", str(user_src), str(tmp_path / "o"), "--files-per-chunk", "0"]) == 2
    assert "files_per_chunk=0" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ingest", str(empty), str(tmp_path / "o2")]) == 2
    assert "holds no input files" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing"), str(tmp_path / "o3")]) == 2
    assert "no such input" in capsys.readouterr().err
    assert main(["score", str(user_src), "--out", str(tmp_path / "o4"), "--threshold", "1.5", "--no-segmenter"]) == 2
    assert "threshold" in capsys.readouterr().err


def test_train_and_tune_refuse_a_folder_that_is_no_ingest_before_ray(tmp_path, capsys):
    import ray

    started = ray.is_initialized()
    assert main(["train", "segment", "--data", str(tmp_path), "--epochs", "1"]) == 2
    assert main(["tune", "classify", "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("not a finished ingest output") == 2
    assert ray.is_initialized() == started


def test_a_first_claim_killed_while_writing_its_marker_does_not_lock_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".strokeray.json.0a1b2c3d.partial").write_text('{"sta')  # the marker's scratch, cut short
    stage = StageDir(str(out), "demo", ("result.parquet",))
    assert stage.claim(digest="d") is False
    assert sorted(p.name for p in out.iterdir()) == [".strokeray.json"] and stage.marker()["stage"] == "demo"
    user = tmp_path / "user"
    user.mkdir()
    (user / ".strokeray.json.0a1b2c3d.partial").write_text("")
    (user / "notes.txt").write_text("mine")  # anything else: not strokeray's folder, never touched
    with pytest.raises(OutputError, match="not made by strokeray"):
        StageDir(str(user), "demo", ("result.parquet",)).claim(digest="d")
    assert sorted(p.name for p in user.iterdir()) == [".strokeray.json.0a1b2c3d.partial", "notes.txt"]


def test_a_run_is_finished_exactly_when_its_done_document_is_there(tmp_path):
    stage = StageDir(str(tmp_path / "out"), "demo", ("result.parquet", "done.json"), done="done.json")
    assert stage.claim(digest=settings_digest({"a": 1})) is False
    assert stage.finished() is None  # claimed, nothing finished
    stage.finish({"rows": 3})
    assert stage.finished() == {"rows": 3}
    # the same settings find the finished run; others (with overwrite) clear it first
    again = StageDir(stage.url, "demo", stage.outputs, done="done.json")
    assert again.claim(digest=settings_digest({"a": 1})) is True and again.finished() == {"rows": 3}
    assert again.claim(digest=settings_digest({"a": 2}), overwrite=True) is False and again.finished() is None
    with pytest.raises(ValueError, match="names no done document"):
        StageDir(stage.url, "demo", ()).finish({})
    again.finish({"rows": 3})
    (tmp_path / "out" / "done.json").write_text('{"rows": ')  # cut short: not finished, done again
    assert again.finished() is None


def test_settings_digest_ignores_key_order_and_sees_every_value():
    assert settings_digest({"a": 1, "b": [1, 2]}) == settings_digest({"b": [1, 2], "a": 1})
    assert settings_digest({"a": 1, "b": [1, 2]}) != settings_digest({"a": 1, "b": [2, 1]})
    assert len(settings_digest({"path": Path("/x")})) == 16  # values JSON cannot hold count by their text
