import numpy as np

from strokeray.datasets.phantom import PhantomConfig, draw_patient, render_slice
from strokeray.imaging.brain_mask import brain_mask, head_mask, largest_component, strip_skull


def _phantom(rng, kind=0, size=256):
    cfg = PhantomConfig(size=size, slices=4)
    spec = draw_patient(0, kind, rng, cfg)
    hu, mask = render_slice(spec, 2, cfg, rng)
    return hu, mask, spec


def test_largest_component():
    m = np.zeros((20, 20), bool)
    m[1:3, 1:3] = True
    m[10:18, 10:18] = True
    out = largest_component(m)
    assert out.sum() == 64 and not out[1, 1]


def test_head_mask_drops_headrest(rng):
    hu, _, _ = _phantom(rng)
    head = head_mask(hu)
    assert not head[hu == hu].all()
    # The head-rest (isolated dense arc) is denser than air but not part of the head.
    rest = (hu > 20) & ~head
    assert rest.sum() > 50


def test_brain_mask_excludes_skull_and_keeps_brain(rng):
    hu, _, spec = _phantom(rng)
    sp = (spec.spacing_mm, spec.spacing_mm)
    brain = brain_mask(hu, sp)
    assert brain.any()
    assert hu[brain].max() < 150
    assert 15 < hu[brain].mean() < 45
    # Brain tissue (grey/white matter range) inside the head is almost entirely covered.
    tissue = (hu > 15) & (hu < 55) & head_mask(hu)
    inner = tissue & ~(np.abs(hu - 45) < 10)  # scalp is ~45 HU; measure on brain-only values
    assert brain[inner].mean() > 0.75
    stripped = strip_skull(hu, brain)
    assert stripped[~brain].max() == -1024.0


def test_no_brain_in_air():
    hu = np.full((128, 128), -1000.0, np.float32)
    assert not brain_mask(hu, (1.0, 1.0)).any()


def test_brain_mask_ignores_scalp_ring():
    # A ring of soft tissue with no bone around it (scalp or a vertex slice) is not brain.
    yy, xx = np.mgrid[0:200, 0:200]
    r = np.hypot(yy - 100, xx - 100)
    hu = np.where((r > 60) & (r < 80), 40.0, -1000.0).astype(np.float32)
    assert not brain_mask(hu, (0.5, 0.5)).any()


def test_fill_holes_matches_scipy(rng):
    from scipy import ndimage

    from strokeray.imaging.brain_mask import fill_holes

    for _ in range(20):
        m = rng.random((60, 80)) > 0.55
        assert np.array_equal(fill_holes(m), ndimage.binary_fill_holes(m))


def test_working_resolution_matches_full_resolution(rng):
    from dataclasses import replace

    from strokeray.imaging.brain_mask import BrainMaskConfig, head_and_brain

    hu, _, spec = _phantom(rng, size=512)
    sp = (spec.spacing_mm, spec.spacing_mm)
    assert spec.spacing_mm < 0.5  # so the default works on a 2x coarser grid
    _, coarse = head_and_brain(hu, sp)
    _, fine = head_and_brain(hu, sp, replace(BrainMaskConfig(), working_mm=0.0))
    iou = (coarse & fine).sum() / (coarse | fine).sum()
    assert iou > 0.97
    assert hu[coarse].max() < 150  # the bone cut is redone at full resolution
