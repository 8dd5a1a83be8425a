import json

import numpy as np
import pytest

from strokeray.datasets.phantom import PhantomConfig
from strokeray.datasets.synth import CLASS_FOLDERS, SynthConfig, held_out_patients, patient_kind, write_archive
from strokeray.datasets.teknofest import CLASS_NAMES
from strokeray.imaging.overlay import lesion_mask_from_overlay
from strokeray.io.decode import decode_slices
from strokeray.io.dicom_decode import decode_dicom
from strokeray.io.errors import DecodeError
from strokeray.io.raster import decode_image


def test_layout_and_counts(phantom_archive):
    root, summary = phantom_archive
    meta = json.loads((root / "synth.json").read_text())
    assert meta["slices"] == summary.slices == 6 * 4
    dicoms = [p for p in root.rglob("*.dcm") if not p.name.startswith("zz_")]
    pngs = list(root.glob("*/*/PNG/*.png"))
    assert len(dicoms) == len(pngs) == summary.slices
    for p in dicoms:
        assert p.parent.name == "DICOM" and p.parent.parent.name in CLASS_FOLDERS.values()
        assert p.parent.parent.parent.name in ("Training", "Test")
    assert sum(summary.per_class.values()) == summary.slices


def test_patients_never_straddle_splits(phantom_archive):
    root, _ = phantom_archive
    split_of = {}
    for p in root.rglob("*.dcm"):
        if p.name.startswith("zz_"):
            continue
        patient = p.stem.split("_")[0]
        split_of.setdefault(patient, set()).add(p.parts[-4])
    assert all(len(s) == 1 for s in split_of.values())


def test_uids_and_positions_are_consistent_within_a_patient(phantom_archive):
    root, _ = phantom_archive
    by_patient = {}
    for p in sorted(root.rglob("*.dcm")):
        if p.name.startswith("zz_"):
            continue
        (ct,) = decode_dicom(p.read_bytes())
        by_patient.setdefault(p.stem.split("_")[0], []).append(ct)
    for slices in by_patient.values():
        assert len({c.patient_key for c in slices}) == 1
        assert len({c.series_key for c in slices}) == 1
        assert len({c.spacing_mm for c in slices}) == 1
        zs = sorted(c.position_mm[2] for c in slices)
        assert np.allclose(np.diff(zs), slices[0].thickness_mm)
        assert len({c.instance_key for c in slices}) == len(slices)


def test_masks_overlays_and_folders_agree(phantom_archive):
    root, _ = phantom_archive
    checked = 0
    for mask_png in root.glob("*/*/MASK/*.png"):
        folder_class = CLASS_NAMES[mask_png.parent.parent.name.lower()]
        mask = decode_image(mask_png.read_bytes())
        assert set(np.unique(mask)) == {0, folder_class}
        overlay = decode_image((mask_png.parent.parent / "OVERLAY" / mask_png.name).read_bytes())
        assert np.array_equal(lesion_mask_from_overlay(overlay), mask)  # hue alone recovers the class
        (ct,) = decode_dicom((mask_png.parent.parent / "DICOM" / f"{mask_png.stem}.dcm").read_bytes())
        lesion_hu = ct.hu[mask > 0].mean()
        assert (lesion_hu > 50) if folder_class == 2 else (lesion_hu < 26)
        checked += 1
    assert checked >= 4
    # Non-Stroke slices carry no annotations at all.
    assert not list(root.glob("*/Non-Stroke/MASK")) and not list(root.glob("*/Non-Stroke/OVERLAY"))


def test_planted_files_get_their_reasons(phantom_archive):
    root, summary = phantom_archive
    assert len(summary.planted) == 8
    for item in summary.planted:
        data = open(item["path"], "rb").read()
        if item["expect"] == "ok":
            assert decode_slices(data, item["path"])
        else:
            with pytest.raises(DecodeError) as err:
                decode_slices(data, item["path"])
            assert err.value.reason.value == item["expect"], item


def test_compressed_syntaxes_are_used(tmp_path):
    s = write_archive(
        str(tmp_path / "a"), SynthConfig(patients=10, seed=1, png=False, phantom=PhantomConfig(size=128, slices=1))
    )
    syntaxes = {decode_dicom(p.read_bytes())[0].transfer_syntax for p in (tmp_path / "a").rglob("*.dcm")}
    assert len(syntaxes) >= 3 and s.slices == 10


def test_same_seed_same_bytes(tmp_path):
    cfg = SynthConfig(patients=2, seed=4, phantom=PhantomConfig(size=96, slices=2))
    write_archive(str(tmp_path / "a"), cfg)
    write_archive(str(tmp_path / "b"), cfg)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


@pytest.mark.parametrize("seed", range(6))
def test_the_test_folder_is_stratified_by_class(seed):
    held = held_out_patients(24, seed, 0.25)
    assert sorted(sum(patient_kind(i) == k for i in held) for k in range(3)) == [2, 2, 2]
    assert held != held_out_patients(24, seed + 1, 0.25)  # drawn per seed
    small = held_out_patients(8, seed, 0.25)  # 3/3/2 patients per class: one of each held out
    assert sorted(patient_kind(i) for i in small) == [0, 1, 2]
    assert held_out_patients(8, seed, 0.0) == set()
