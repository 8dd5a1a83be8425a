import cv2
import numpy as np
import pytest

from strokeray.imaging.lesion_insert import HEMORRHAGE_KINDS, LesionRanges, insert_hemorrhage, insert_infarct

PX_MM = 0.5


def head(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 256 px slice: a round brain of 30-38 HU with noise, two CSF ventricles in the middle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(yy - 128, xx - 128)
    brain = r < 100
    hu = np.where(brain, 34.0, -1000.0) + rng.normal(0, 3, (256, 256))
    for cx in (112, 144):
        hu[(np.abs(yy - 128) < 18) & (np.abs(xx - cx) < 7)] = 5.0
    return hu.astype(np.float32), brain


@pytest.mark.parametrize("kind", HEMORRHAGE_KINDS)
def test_each_hemorrhage_is_hyperdense_inside_the_brain_and_nothing_else_moves(kind):
    hu, brain = head()
    out, mask = insert_hemorrhage(hu, brain, kind, np.random.default_rng(1), PX_MM)
    assert mask.sum() * PX_MM**2 >= LesionRanges().min_area_mm2 and not (mask & ~brain).any()
    core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # inside the partial volume
    assert 40 < out[core].mean() < 76 and out[mask].mean() > hu[mask].mean() + 5
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((13, 13), np.uint8)).astype(bool)
    assert np.array_equal(out[far], hu[far])  # only the lesion and its partial-volume edge change
    depth_to_edge = np.hypot(*(np.argwhere(mask) - 128).T).max()
    if kind in ("subdural", "epidural"):
        assert depth_to_edge > 97  # along the inner table
    if kind == "intraventricular":
        assert (hu[mask] < 10).all()  # it fills the CSF of the ventricles


def test_an_infarct_is_hypodense_and_reaches_the_cortex():
    hu, brain = head()
    out, mask = insert_infarct(hu, brain, np.random.default_rng(2), PX_MM)
    assert 8 < out[mask].mean() < 27 and out[mask].mean() < hu[mask].mean() - 5
    assert np.hypot(*(np.argwhere(mask) - 128).T).max() > 97 and not (mask & ~brain).any()
    assert out[mask].std() > 1.5  # the slice's noise stays on the lesion


def test_same_seed_same_lesion_and_no_room_is_none():
    hu, brain = head()
    a = insert_hemorrhage(hu, brain, "subdural", np.random.default_rng(5), PX_MM)
    b = insert_hemorrhage(hu, brain, "subdural", np.random.default_rng(5), PX_MM)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    flat = np.where(brain, 34.0, -1000.0).astype(np.float32)  # no ventricles to fill
    assert insert_hemorrhage(flat, brain, "intraventricular", np.random.default_rng(0), PX_MM) is None
    with pytest.raises(ValueError, match="kind"):
        insert_hemorrhage(hu, brain, "subarachnoid", np.random.default_rng(0), PX_MM)
