import numpy as np
import pytest

from strokeray.datasets.phantom import HU_GREY, HU_WHITE, PhantomConfig, draw_patient, render_slice
from strokeray.imaging.brain_mask import brain_mask
from strokeray.imaging.overlay import BACKGROUND, HEMORRHAGIC, ISCHEMIC

CFG = PhantomConfig(size=256, slices=6)


def _lesion_slices(kind, seeds=range(6)):
    for seed in seeds:
        rng = np.random.default_rng(seed)
        spec = draw_patient(seed, kind, rng, CFG)
        for k in range(CFG.slices):
            hu, mask = render_slice(spec, k, CFG, rng)
            if mask.any():
                yield spec, hu, mask


def _healthy_brain(hu, mask, spec):
    brain = brain_mask(hu, (spec.spacing_mm,) * 2)
    return brain & (mask == 0) & (hu > 15) & (hu < 50)


def test_every_stroke_patient_shows_its_lesion():
    for kind in (ISCHEMIC, HEMORRHAGIC):
        for seed in range(6):
            rng = np.random.default_rng(seed)
            spec = draw_patient(seed, kind, rng, CFG)
            visible = [render_slice(spec, k, CFG, rng)[1].any() for k in range(CFG.slices)]
            assert any(visible), (kind, seed)


def test_hemorrhage_is_hyperdense_and_mask_exact():
    n = 0
    for spec, hu, mask in _lesion_slices(HEMORRHAGIC):
        assert set(np.unique(mask)) == {BACKGROUND, HEMORRHAGIC}
        lesion = hu[mask == HEMORRHAGIC]
        assert 50 <= lesion.mean() <= 90
        assert abs(lesion.mean() - spec.lesion.hu) < 3  # the mask covers exactly the painted blood
        healthy = hu[_healthy_brain(hu, mask, spec)]
        assert lesion.mean() > healthy.mean() + 15
        n += 1
    assert n >= 6


def test_ischemia_is_subtle_hypodense_and_mask_exact():
    n = 0
    for spec, hu, mask in _lesion_slices(ISCHEMIC):
        assert set(np.unique(mask)) == {BACKGROUND, ISCHEMIC}
        lesion = hu[mask == ISCHEMIC]
        assert 10 <= lesion.mean() <= 25
        assert abs(lesion.mean() - spec.lesion.hu) < 3
        healthy = hu[_healthy_brain(hu, mask, spec)]
        assert healthy.mean() - 25 < lesion.mean() < healthy.mean() - 3  # subtle, but there
        n += 1
    assert n >= 6


def test_tissue_values_are_ct_like():
    rng = np.random.default_rng(0)
    spec = draw_patient(0, BACKGROUND, rng, CFG)
    hu, mask = render_slice(spec, 2, CFG, rng)
    assert not mask.any()
    assert np.median(hu[hu < -500]) == pytest.approx(-1000, abs=5)  # air
    assert (hu > 600).mean() > 0.02  # skull
    brain = brain_mask(hu, (spec.spacing_mm,) * 2)
    assert HU_WHITE - 3 < np.median(hu[brain]) < HU_GREY + 3
    noise = hu[brain].std()
    assert 2 < noise < 12


def test_deterministic_by_seed():
    a = render_slice(draw_patient(1, HEMORRHAGIC, np.random.default_rng(9), CFG), 2, CFG, np.random.default_rng(5))
    b = render_slice(draw_patient(1, HEMORRHAGIC, np.random.default_rng(9), CFG), 2, CFG, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_patients_vary():
    specs = [draw_patient(i, BACKGROUND, np.random.default_rng(i), CFG) for i in range(5)]
    assert len({round(s.rotation_deg, 3) for s in specs}) == 5
    assert len({round(s.spacing_mm, 5) for s in specs}) == 5
