"""The scoring benchmark's ceiling: forward passes and decoding sharing the same cores."""

from strokeray.benchmarks.score import ceiling


def test_the_ceiling_adds_the_core_seconds_of_forward_and_decode():
    assert abs(ceiling(19.2, 1e12, 2) - 19.2) < 1e-6  # free decoding: the models alone
    # 2 cores at 19.2 slices/s forward (0.104 core-s a slice) + 66.4 slices/s decode on one (0.015)
    assert abs(ceiling(19.2, 66.4, 2) - 2 / (2 / 19.2 + 1 / 66.4)) < 1e-9
    assert 16.7 < ceiling(19.2, 66.4, 2) < 16.9
