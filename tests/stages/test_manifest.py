"""The manifest's patient keys: read from DICOM headers for a split, left to decoding for scoring."""

from __future__ import annotations

import pytest

from strokeray.datasets.layouts import DEFERRED_RULE
from strokeray.datasets.slice_records import _patient, records_for
from strokeray.io.pseudonym import pseudonym
from strokeray.stages import manifest as manifest_module
from strokeray.stages.manifest import ManifestConfig, build_manifest, options_digest

from ..io.dicom_factory import ct_bytes, head_like

PATIENTS = {"a.dcm": "MRN-1", "b.dcm": "MRN-1", "c.dcm": "MRN-2", "d.dcm": ""}


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k, (name, pid) in enumerate(PATIENTS.items()):
        data = ct_bytes(
            hu=head_like((256, 256), seed=k),
            pid=pid,
            sop_uid=f"1.2.826.0.1.3680043.8.498.{k + 1}",
            spacing_mm=(0.9, 0.9),
        )
        (src / name).write_bytes(data)
    return src


def _rows(src, tmp_path, cfg):
    return {
        r["name"]: r for r in build_manifest(str(src), str(tmp_path / "m"), cfg, log=lambda *_: None).table.to_pylist()
    }


def test_headers_give_the_split_its_patients(folder, tmp_path):
    rows = _rows(folder, tmp_path, ManifestConfig())
    assert rows["a.dcm"]["group"] == rows["b.dcm"]["group"] == pseudonym("MRN-1", "patient")
    assert rows["a.dcm"]["group_rule"] == "dicom_patient_id"
    assert rows["d.dcm"]["group_rule"] == "dicom_StudyInstanceUID"  # no PatientID: the study stands in


def test_scoring_reads_no_header_and_decoding_supplies_the_same_patient(folder, tmp_path, monkeypatch):
    def no_reads(*_a, **_k):
        raise AssertionError("a header was read")

    monkeypatch.setattr(manifest_module, "read_head", no_reads)
    monkeypatch.setattr(manifest_module, "read_bytes", no_reads)
    rows = _rows(folder, tmp_path, ManifestConfig(read_headers=False))
    assert {r["group_rule"] for r in rows.values()} == {DEFERRED_RULE}
    patients = {}
    for name, row in rows.items():
        (record,), problems = records_for(row)
        assert problems == []
        patients[name] = record["patient"]
    assert patients["a.dcm"] == patients["b.dcm"] == pseudonym("MRN-1", "patient")
    assert patients["c.dcm"] == pseudonym("MRN-2", "patient")
    # No PatientID: the file is its own patient (the split's rule would take the study UID).
    assert patients["d.dcm"] == rows["d.dcm"]["group"] == pseudonym("d.dcm", "file")


def test_how_keys_are_read_is_not_part_of_the_dataset():
    assert options_digest("src", ManifestConfig(), None) == options_digest(
        "src", ManifestConfig(read_headers=False), None
    )


def test_a_split_group_still_wins_over_the_decoded_key():
    """Rows whose group came from a header or a labels CSV keep it (a CSV may merge patients)."""
    row = {"group": "csv-patient", "group_rule": "labels_csv"}
    assert _patient(row, "dicom-key") == "csv-patient"
    assert _patient({"group": "", "group_rule": ""}, "dicom-key") == "dicom-key"
    assert _patient({"group": "file-key", "group_rule": DEFERRED_RULE}, "dicom-key") == "dicom-key"
    assert _patient({"group": "file-key", "group_rule": DEFERRED_RULE}, "") == "file-key"
