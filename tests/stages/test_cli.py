import json
import subprocess
import sys
from pathlib import Path

import pytest

from strokeray.cli import build_parser, main

SUBCOMMANDS = ["synth", "decode", "preview", "ingest", "train", "evaluate", "pipeline", "benchmark"]


@pytest.mark.parametrize("cmd", [[], *[[c] for c in SUBCOMMANDS]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: strokeray" in capsys.readouterr().out


def test_parser_knows_every_subcommand():
    text = build_parser().format_help()
    for c in SUBCOMMANDS:
        assert c in text


def test_synth_decode_and_pipeline(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), "--patients", "3", "--slices", "2", "--size", "128", "--bad-files"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["slices"] == 6 and out["planted"] == 8
    files = sorted(str(p) for p in (tmp_path / "a").rglob("*.dcm"))
    assert main(["decode", *files]) == 1  # the planted bad files fail
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sum("reason" in x for x in lines) == 6
    assert all("Phantom" not in json.dumps(x) for x in lines)  # no patient names, ever


def test_pipeline_job_runs_and_reuses(tmp_path):
    cmd = [sys.executable, str(Path(__file__).parents[2] / "jobs" / "pipeline.py"), "--out", str(tmp_path / "run"), "--patients", "3"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "[synth] 18 slices of 3 patients" in first.stdout
    assert (tmp_path / "run" / "preview" / "summary.json").is_file()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "[synth] reusing" in second.stdout
