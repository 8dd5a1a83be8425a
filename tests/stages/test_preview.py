import csv
import json

import cv2

from strokeray.stages.preview import PreviewConfig, run_preview


def test_preview_of_phantom_archive(phantom_archive, tmp_path):
    root, summary = phantom_archive
    s = run_preview(str(root), str(tmp_path / "pv"))
    planted_bad = [p for p in summary.planted if p["expect"] != "ok"]
    planted_ok = len(summary.planted) - len(planted_bad)
    # What ingest sees: every DICOM slice (PNG twins are shadowed by their DICOM) plus the valid
    # oddities; each bad file exactly once in quarantine.
    assert s.slices == summary.slices + planted_ok
    assert s.quarantined == len(planted_bad)
    rows = list(csv.DictReader((tmp_path / "pv" / "quarantine.csv").open()))
    assert sorted(r["reason"] for r in rows) == sorted(p["expect"] for p in planted_bad)
    assert s.brain_found == s.slices
    lesion_slices = sum(v for k, v in summary.per_class.items() if k != "Non-Stroke")
    assert s.with_mask == lesion_slices
    pngs = list((tmp_path / "pv" / "slices").glob("*.png"))
    assert len(pngs) == s.slices
    assert cv2.imread(str(pngs[0])).shape == (256, 768, 3)
    assert json.loads((tmp_path / "pv" / "summary.json").read_text())["slices"] == s.slices


def test_preview_limit(phantom_archive, tmp_path):
    root, _ = phantom_archive
    assert run_preview(str(root), str(tmp_path / "pv"), PreviewConfig(limit=3)).files == 3
