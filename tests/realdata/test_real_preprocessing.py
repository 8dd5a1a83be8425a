"""Preprocessing on real head CT: RSNA slices (brain mask) and CT-ICH slices with bleed masks."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from strokeray.imaging.brain_mask import brain_mask, strip_skull
from strokeray.imaging.overlay import HEMORRHAGIC
from strokeray.imaging.views import preprocess
from strokeray.io.decode import decode_slices
from strokeray.io.dicom_decode import decode_dicom, decode_dicom_mask

from ..conftest import shared_data

pytestmark = pytest.mark.realdata


def _rsna():
    root = shared_data("rsna-ich-dicom-20")
    files = sorted(root.rglob("*.dcm"))
    assert len(files) == 20
    return [(f.name, decode_dicom(f.read_bytes(), f.name)[0]) for f in files]


def test_rsna_brain_masks_exclude_skull_and_are_plausible():
    found = 0
    for name, ct in _rsna():
        assert ct.spacing_mm is not None and ct.hu_rule == "rescale_tags"
        brain = brain_mask(ct.hu, ct.spacing_mm)
        if not brain.any():
            continue  # neck and vertex slices have no brain to find
        found += 1
        area_cm2 = brain.sum() * ct.spacing_mm[0] * ct.spacing_mm[1] / 100
        stripped = strip_skull(ct.hu, brain)
        assert 0 <= ct.hu[brain].mean() <= 80, name
        assert stripped[brain].max() <= 150, name
        assert 5 <= area_cm2 <= 250, (name, area_cm2)
    assert found >= 16


def test_rsna_views_have_no_bone():
    for name, ct in _rsna():
        p = preprocess(ct.hu, ct.spacing_mm)
        if p.brain_found:
            # Bone saturates every default window; after skull removal almost nothing does.
            sub = p.classification.image[1]  # subdural window tops out at 180 HU
            assert (sub == 255).mean() < 0.002, name


def test_ctich_masks_stay_on_the_bleeds_in_the_segmentation_view():
    root = shared_data("ctich-dicom-masks-26")
    with (root / "slice_labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 26
    for row in rows:
        ct = decode_dicom((root / row["image"]).read_bytes(), row["image"])[0]
        assert ct.hu_rule == "identity" and ct.modality == "OT"  # Secondary Capture holding HU
        mask = decode_dicom_mask((root / row["mask"]).read_bytes(), row["mask"])
        assert mask.sum() == int(row["mask_foreground_pixels"])
        # Bleeds are denser than the brain around them in the source ...
        assert ct.hu[mask].mean() > 35
        p = preprocess(ct.hu, ct.spacing_mm, mask.astype(np.uint8) * HEMORRHAGIC)
        seg = p.segmentation
        lesion = seg.mask == HEMORRHAGIC
        assert lesion.any(), row["image"]
        # ... and still are after cropping and resampling: the mask moved with the image.
        brain_window = seg.image[0].astype(float)
        rest = (brain_window > 0) & ~lesion
        assert brain_window[lesion].mean() > brain_window[rest].mean() + 10, row["image"]


def test_ctich_jpg_exports_preprocess():
    root = shared_data("ctich-kaggle-strokect")
    files = sorted((root / "Dataset" / "Stroke").glob("7*.jpg"))[:12]
    found = 0
    for f in files:
        (ct,) = decode_slices(f.read_bytes(), f.name)
        assert not ct.is_hu and ct.hu.shape == (650, 650)
        p = preprocess(ct.hu, None, None, export_window=ct.export_window)
        found += p.brain_found
        assert p.classification.image.shape == (3, 224, 224)
    assert found >= 9


def test_ctich_dicom_pairs_become_masked_records_whose_masks_map_back_to_the_source(tmp_path):
    """The 26 CT-ICH image/mask DICOM pairs through layouts (mask folder pairing), ingest's per-file
    records (DICOM mask decode) and score's ``source_mask``: each annotated bleed, carried into the
    256 px segmentation view and back onto its 512x512 source grid, overlaps itself with IoU >= 0.9."""
    from dataclasses import asdict

    from strokeray.datasets.layouts import label_listing
    from strokeray.datasets.slice_records import records_for
    from strokeray.imaging.rle import encode_rle
    from strokeray.io.sources import SourceLimits, list_inputs
    from strokeray.stages.manifest import ManifestConfig, build_manifest
    from strokeray.stages.score import source_mask

    root = shared_data("ctich-dicom-masks-26")
    rows = label_listing(list_inputs(str(root), SourceLimits()).entries, mask_lesion=HEMORRHAGIC).rows
    assert len(rows) == 26 and all(r.mask_kind == "MASK" and r.lesion == HEMORRHAGIC for r in rows)
    # 16 patients, from the <patient>_<slice> names: the headers hold no PatientID, and the series UID
    # they do hold (one per slice) must not split a patient (the manifest reads the 26 headers here).
    manifest = build_manifest(str(root), str(tmp_path / "m"), ManifestConfig(mask_lesion=HEMORRHAGIC), log=print)
    groups = manifest.table.to_pydict()
    assert len(set(groups["group"])) == 16 and set(groups["group_rule"]) == {"underscore_name"}
    ious = []
    for row in rows:
        (rec,), problems = records_for({**asdict(row), "split": "train"})
        assert not problems and rec["has_mask"] and set(np.unique(rec["seg_mask"])) == {0, HEMORRHAGIC}
        truth = decode_dicom_mask(open(row.mask_uri, "rb").read(), row.mask_uri)
        back = source_mask(
            {"mask_rle": encode_rle(rec["seg_mask"]), "seg_box": rec["seg_box"], "source_shape": rec["source_shape"]}
        )
        assert back.shape == truth.shape == (512, 512)
        hit = back == HEMORRHAGIC
        ious.append((hit & truth).sum() / (hit | truth).sum())
    assert min(ious) >= 0.9, [round(float(x), 3) for x in ious]
