"""Lesions synthesised on real CT-ICH anatomy: only lesion-free slices, exact masks on the drawn
density change, the TEKNOFEST layout ingest reads, the same bytes for the same seed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from strokeray.cli import main
from strokeray.datasets.layouts import LabelsTable, label_listing
from strokeray.datasets.lesion_synth import LesionSynthConfig, write_lesion_archive
from strokeray.imaging.overlay import HEMORRHAGIC, ISCHEMIC
from strokeray.io.raster import decode_image, grey_to_pseudo_hu
from strokeray.io.sources import SourceLimits, list_inputs
from strokeray.stages.stage_dir import OutputError
from strokeray.stages.synth import run_lesion_synth

from ..conftest import shared_data

pytestmark = pytest.mark.realdata


def _cfg(root, **kw) -> LesionSynthConfig:
    table = LabelsTable(label_col="ctich_patient_level_status", patient_col="ctich_patient_id")
    return LesionSynthConfig(labels=str(root / "labels.csv"), labels_table=table, workers=1, **kw)


def test_lesions_are_drawn_into_lesion_free_ct_ich_slices(tmp_path):
    root = shared_data("ctich-kaggle-strokect")
    # Patient 100's slices 10-19 (name order): mid-brain sections of a no_ICH patient.
    s = write_lesion_archive(str(root), str(tmp_path / "a"), _cfg(root, limit=12))
    assert s.sources == 12 and s.used >= 8 and s.written["Non-Stroke"] == s.used
    assert s.written["Hemorrhagic"] == s.used and s.written["Ischemic"] >= s.used - 1
    with open(root / "labels.csv") as fh:
        status = {r["path"].split("/")[-1]: r["ctich_patient_level_status"] for r in csv.DictReader(fh)}
    with open(tmp_path / "a" / "provenance.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {status[r["source"].split("/")[-1]] for r in rows} == {"no_ICH"}
    for r in rows:
        if r["lesion"] == "Non-Stroke":
            continue
        stem = r["file"].split("/")[-1]
        drawn = grey_to_pseudo_hu(decode_image((tmp_path / "a" / r["file"]).read_bytes()))
        plain = grey_to_pseudo_hu(decode_image((tmp_path / "a" / "Non-Stroke" / "PNG" / stem).read_bytes()))
        mask = decode_image((tmp_path / "a" / r["lesion"] / "MASK" / stem).read_bytes())
        code = HEMORRHAGIC if r["lesion"] == "Hemorrhagic" else ISCHEMIC
        assert set(np.unique(mask)) == {0, code}
        change = (drawn - plain)[mask > 0].mean()
        assert change > 5 if code == HEMORRHAGIC else change < -5, (r, change)  # hyper- / hypodense
    # Ingest reads it as TEKNOFEST: classes from folders, masks attached, one patient per source patient.
    lab = label_listing(list_inputs(str(tmp_path / "a"), SourceLimits()).entries)
    assert lab.layout == "teknofest"
    lesions = [row for row in lab.rows if row.lesion in (ISCHEMIC, HEMORRHAGIC)]
    assert lesions and all(row.mask_kind == "MASK" for row in lesions)
    assert len({row.group for row in lab.rows}) == 1
    # Same seed, same bytes; another seed, other lesions.
    write_lesion_archive(str(root), str(tmp_path / "b"), _cfg(root, limit=12))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    write_lesion_archive(str(root), str(tmp_path / "c"), _cfg(root, limit=12, seed=1))
    assert any(
        (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files if "MASK" in str(f)
    )


def test_the_stage_claims_its_folder_and_reuses_a_finished_run(tmp_path, capsys):
    root = shared_data("ctich-kaggle-strokect")
    src = str(root)
    with pytest.raises(OutputError, match="input"):
        run_lesion_synth(src, str(root / "out"), _cfg(root, limit=2))
    # The command line makes the same run as the config (so the next call finds it finished).
    assert (
        main(
            [
                "synth-lesions",
                src,
                str(tmp_path / "o"),
                "--labels",
                str(root / "labels.csv"),
                "--limit",
                "2",
                "--labels-label-col",
                "ctich_patient_level_status",
                "--labels-patient-col",
                "ctich_patient_id",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["sources"] == 2
    assert run_lesion_synth(src, str(tmp_path / "o"), _cfg(root, limit=2)) is None  # finished: nothing written
    with pytest.raises(OutputError, match="other inputs or settings"):
        run_lesion_synth(src, str(tmp_path / "o"), _cfg(root, limit=3))
