import numpy as np
import pytest

from strokeray.imaging.windows import BRAIN, DEFAULT_WINDOWS, STROKE, Window, apply_window, apply_windows, parse_window


def test_window_maps_edges_and_clips():
    hu = np.array([[-1000.0, 0.0, 40.0, 80.0, 3000.0]])
    out = apply_window(hu, BRAIN)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 128, 255, 255]]


def test_stroke_window_is_narrower_than_brain():
    hu = np.array([[25.0, 35.0]])
    spread_brain = np.diff(apply_window(hu, BRAIN).astype(int))
    spread_stroke = np.diff(apply_window(hu, STROKE).astype(int))
    assert spread_stroke[0, 0] > 2 * spread_brain[0, 0]


def test_apply_windows_stacks_channels_first():
    hu = np.zeros((5, 7), dtype=np.float32)
    out = apply_windows(hu)
    assert out.shape == (len(DEFAULT_WINDOWS), 5, 7)
    with pytest.raises(ValueError):
        apply_windows(np.zeros((2, 5, 7)))


def test_parse_window():
    assert parse_window("brain") == BRAIN
    assert parse_window("custom:50:100") == Window("custom", 50.0, 100.0)
    with pytest.raises(ValueError):
        parse_window("nope")
    with pytest.raises(ValueError):
        parse_window("a:1:0")
