import numpy as np
import pytest

from strokeray.datasets.slice_context import natural_key, series_order, stack_neighbours, with_context


def _views(values):
    """One 1x2x2 view per value, filled with it."""
    return np.asarray(values, np.uint8)[:, None, None, None].repeat(2, 2).repeat(2, 3)


def test_natural_key_orders_numbers_by_value():
    names = ["125 (10).jpg", "125 (9).jpg", "125 (1).jpg", "125 (100).jpg"]
    assert sorted(names, key=natural_key) == ["125 (1).jpg", "125 (9).jpg", "125 (10).jpg", "125 (100).jpg"]


def test_series_order_prefers_position_then_instance_then_file_name():
    batch = {
        "patient": np.array(["p", "p", "p", "q", "q", "q", "r", "r"]),
        "series": np.array(["a", "a", "a", "", "", "", "", ""]),
        # p: positions known (instance numbers disagree and must lose); q: one position missing,
        # so instance numbers; r: neither, so the file name
        "z_mm": np.array([5.0, -5.0, 0.0, 1.0, np.nan, 2.0, np.nan, np.nan]),
        "instance_number": np.array([1, 2, 3, 30, 10, 20, -1, -1]),
        "source": np.array(["x", "y", "z", "q3", "q1", "q2", "r (10).jpg", "r (9).jpg"]),
    }
    order, groups = series_order(batch)
    assert batch["source"][order].tolist() == ["y", "z", "x", "q1", "q2", "q3", "r (9).jpg", "r (10).jpg"]
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_stack_neighbours_takes_each_slices_own_series_and_repeats_the_edges():
    images = _views([10, 11, 12, 20, 21])  # two series: 10-12 and 20-21
    stacked = stack_neighbours(images, np.array([0, 0, 0, 1, 1]), 1)
    assert stacked.shape == (5, 3, 2, 2)
    assert stacked[:, :, 0, 0].tolist() == [[10, 10, 11], [10, 11, 12], [11, 12, 12], [20, 20, 21], [20, 21, 21]]
    assert stack_neighbours(images, np.zeros(5), 0) is images
    with pytest.raises(ValueError, match="grouped"):
        stack_neighbours(images, np.array([0, 1, 0, 1, 1]), 1)


def test_with_context_reorders_every_column_with_the_images():
    batch = {
        "id": np.array(["c", "a", "b"]),
        "patient": np.array(["p", "p", "p"]),
        "source": np.array(["s (3).jpg", "s (1).jpg", "s (2).jpg"]),
        "cls_image": np.concatenate([_views([3, 1, 2])] * 2, axis=1),  # two windows each
    }
    out = with_context(batch, "cls_image", 2)
    assert out["id"].tolist() == ["a", "b", "c"]
    assert out["cls_image"].shape == (3, 10, 2, 2)  # 2 windows x 5 slices
    assert out["cls_image"][:, ::2, 0, 0].tolist() == [[1, 1, 1, 2, 3], [1, 1, 2, 3, 3], [1, 2, 3, 3, 3]]


def test_stack_neighbours_of_some_rows_matches_the_whole_stack():
    images, groups = _views([1, 2, 3, 4, 5, 6]), np.array([0, 0, 0, 0, 1, 1])
    whole = stack_neighbours(images, groups, 2)
    assert np.array_equal(stack_neighbours(images, groups, 2, np.array([3, 4])), whole[[3, 4]])
    assert whole[3, :, 0, 0].tolist() == [2, 3, 4, 4, 4] and whole[4, :, 0, 0].tolist() == [5, 5, 5, 6, 6]
