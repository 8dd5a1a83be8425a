import numpy as np
import pytest

from strokeray.imaging.overlay import HEMORRHAGIC, ISCHEMIC, lesion_mask_from_overlay, paint_overlay


def _scene():
    rng = np.random.default_rng(0)
    grey = rng.integers(40, 200, (64, 64)).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:25] = HEMORRHAGIC
    mask[40:55, 30:50] = ISCHEMIC
    return grey, mask


def test_overlay_round_trip_by_hue():
    grey, mask = _scene()
    rgb = paint_overlay(grey, mask)
    assert np.array_equal(lesion_mask_from_overlay(rgb), mask)


def test_overlay_with_given_class_and_base():
    grey, mask = _scene()
    rgb = paint_overlay(grey, mask)
    out = lesion_mask_from_overlay(rgb, base=grey, lesion_class=ISCHEMIC)
    assert np.array_equal(out > 0, mask > 0)
    assert set(np.unique(out)) == {0, ISCHEMIC}


def test_outlined_lesion_is_filled():
    grey = np.full((40, 40), 100, np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[10, 10:30] = rgb[29, 10:30] = (255, 0, 0)
    rgb[10:30, 10] = rgb[10:30, 29] = (255, 0, 0)
    out = lesion_mask_from_overlay(rgb)
    assert out[20, 20] == HEMORRHAGIC and out[5, 5] == 0
    assert (out == HEMORRHAGIC).sum() == 400


def test_overlay_rejects_grey_input():
    with pytest.raises(ValueError):
        lesion_mask_from_overlay(np.zeros((8, 8), np.uint8))
