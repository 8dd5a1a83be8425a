"""`strokeray report` on a run folder where stages are missing: every section says so, nothing fails.
(The full report is built by the submitted pipeline and checked in Chromium in tests/jobs.)"""

import json

from strokeray.cli import main
from strokeray.stages.report import run_report


def test_report_of_an_empty_run_names_every_missing_stage(tmp_path):
    r = run_report(str(tmp_path / "run"), log=lambda *_: None)
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert r.figures == [] and len(r.missing) == 8
    assert "No ingest found" in page and "No finished scoring run" in page and "<img" not in page
    assert "Cross-validation" not in page  # not a pipeline stage: no section, not a gap


def test_report_cli_writes_where_told(tmp_path, capsys):
    (tmp_path / "run" / "shards").mkdir(parents=True)
    card = {
        "objects": 3,
        "layout": "teknofest",
        "slices": 2,
        "patients": 1,
        "with_mask": 1,
        "quarantined": 1,
        "config_digest": "abc",
        "per_split": {"train": {"patients": 1, "slices": 2, "label": {"1": 1}, "lesion": {"2": 1}}},
        "quarantine_reasons": {"not_dicom": 1},
    }
    (tmp_path / "run" / "shards" / "card.json").write_text(json.dumps(card))
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "elsewhere")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["html"].endswith("elsewhere/index.html") and "Data" not in out["missing"]
    page = (tmp_path / "elsewhere" / "index.html").read_text()
    assert "not_dicom" in page and "3 objects ingested" in page
