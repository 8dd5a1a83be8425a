import numpy as np
import pytest

from strokeray.datasets.phantom import PhantomConfig, draw_patient, render_slice
from strokeray.imaging.geometry import mask_to_source
from strokeray.imaging.views import PreprocessConfig, preprocess


def _slice(seed, kind=2, size=512, fov=(230.0, 230.0), k=None):
    cfg = PhantomConfig(size=size, slices=5, fov_mm=fov)
    rng = np.random.default_rng(seed)
    spec = draw_patient(0, kind, rng, cfg)
    k = spec.lesion and int(round((spec.lesion.centre[2] - spec.z0_mm) / cfg.thickness_mm)) if k is None else k
    hu, mask = render_slice(spec, k or 2, cfg, rng)
    return hu, mask, (spec.spacing_mm, spec.spacing_mm)


def test_views_have_fixed_shapes_and_dtypes():
    hu, mask, sp = _slice(1)
    p = preprocess(hu, sp, mask)
    assert p.classification.image.shape == (3, 224, 224)
    assert p.segmentation.image.shape == (3, 256, 256)
    assert p.segmentation.mask.shape == (256, 256)
    assert p.classification.mask is None
    assert p.classification.image.dtype == np.uint8 and p.segmentation.mask.dtype == np.uint8
    assert p.brain_found and 50e2 < p.brain_area_mm2 < 250e2


def test_segmentation_mask_stays_on_the_lesion():
    hu, mask, sp = _slice(1)
    assert mask.any()
    p = preprocess(hu, sp, mask)
    seg = p.segmentation
    brain_ch = seg.image[0].astype(float)
    lesion = seg.mask == 2
    assert lesion.sum() > 20
    # Hemorrhage is hyperdense: under the mask the brain window is brighter than the rest of brain.
    rest = (brain_ch > 0) & ~lesion
    assert brain_ch[lesion].mean() > brain_ch[rest].mean() + 60
    # And the geometry is a pure crop + scale: mapping back gives the source mask.
    back = mask_to_source(seg.mask, seg.box, hu.shape)
    iou = np.logical_and(back == 2, mask == 2).sum() / np.logical_or(back == 2, mask == 2).sum()
    assert iou > 0.8


def test_classification_view_is_centred_segmentation_is_not():
    hu, mask, sp = _slice(5, kind=0)
    p = preprocess(hu, sp)
    cls_brain = p.classification.image[0] > 0
    rows, cols = np.nonzero(cls_brain)
    assert abs(rows.mean() - 111.5) < 3 and abs(cols.mean() - 111.5) < 3
    seg_brain = p.segmentation.image[0] > 0
    r0, c0 = np.nonzero(seg_brain)
    # The segmentation box is centred on the brain's bounding box, not on its centre of mass.
    bb_centre = ((r0.min() + r0.max()) / 2, (c0.min() + c0.max()) / 2)
    assert abs(bb_centre[0] - 127.5) < 3 and abs(bb_centre[1] - 127.5) < 3


def test_spacing_aware_resize_keeps_physical_size():
    # The same anatomy at 0.4 mm and 0.5 mm pixels fills the same share of the view.
    hu_fine, _, sp_fine = _slice(7, kind=0, size=600, fov=(240.0, 240.0))
    hu_coarse, _, sp_coarse = _slice(7, kind=0, size=480, fov=(240.0, 240.0))
    a = (preprocess(hu_fine, sp_fine).classification.image[0] > 0).mean()
    b = (preprocess(hu_coarse, sp_coarse).classification.image[0] > 0).mean()
    assert abs(a - b) / b < 0.05


def test_non_square_image_is_resampled_not_cropped():
    hu, _, sp = _slice(9, kind=0)
    tall = np.full((716, 512), -1000.0, np.float32)
    tall[102:614, :] = hu
    p_tall = preprocess(tall, sp)
    p_sq = preprocess(hu, sp)
    a = (p_tall.classification.image[0] > 0).sum()
    b = (p_sq.classification.image[0] > 0).sum()
    assert abs(a - b) / b < 0.03
    # Nothing of the brain is cut: the brain does not touch the view's border.
    img = p_tall.segmentation.image[0]
    assert img[0].max() == 0 and img[-1].max() == 0 and img[:, 0].max() == 0 and img[:, -1].max() == 0


def test_unknown_spacing_fits_the_brain():
    hu, _, _ = _slice(3, kind=0)
    p = preprocess(hu, None)
    assert p.brain_found and p.brain_area_mm2 is None and p.segmentation.spacing_mm is None
    brain = p.classification.image[0] > 0
    assert brain.mean() > 0.5  # fitted, not lost in a fixed FOV


def test_mask_shape_mismatch_raises():
    hu, mask, sp = _slice(1)
    with pytest.raises(ValueError):
        preprocess(hu, sp, mask[:-1])


def test_configurable_sizes():
    hu, mask, sp = _slice(1)
    from dataclasses import replace

    base = PreprocessConfig()
    cfg = replace(
        base, classification=replace(base.classification, size=128), segmentation=replace(base.segmentation, size=96)
    )
    p = preprocess(hu, sp, mask, cfg)
    assert p.classification.image.shape[1:] == (128, 128) and p.segmentation.mask.shape == (96, 96)


def test_preprocess_config_round_trips_through_a_dict():
    import json

    from strokeray.imaging.views import PreprocessConfig, ViewConfig

    cfg = PreprocessConfig(classification=ViewConfig(size=128, fov_mm=180.0, centred=True))
    back = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back != PreprocessConfig()


def test_keeping_the_skull_keeps_bone_in_both_views():
    """strip_skull=False (ingest --keep-skull, the skull-strip ablation): the head is kept, so the
    bone window shows the skull that the default view turns to air."""
    from dataclasses import replace

    from strokeray.imaging.windows import Window

    hu, mask, sp = _slice(1)
    base = PreprocessConfig(windows=(Window("bone", 600, 2800),))
    kept = replace(
        base,
        classification=replace(base.classification, strip_skull=False),
        segmentation=replace(base.segmentation, strip_skull=False),
    )
    bone = 255 * (1000 - (600 - 1400)) / 2800  # 1,000 HU in the bone window
    for cfg, has_bone in ((base, False), (kept, True)):
        p = preprocess(hu, sp, mask, cfg)
        for view in (p.classification, p.segmentation):
            assert ((view.image[0] >= bone).sum() > 500) == has_bone
