import numpy as np
import pytest

from strokeray.imaging.rle import decode_rle, encode_rle


def test_rle_round_trip_and_format():
    m = np.zeros((4, 5), np.uint8)
    m[0, 1:3] = 2
    m[1, 4] = 1
    m[2, 0] = 1  # continues the run that starts at row 1's last pixel
    text = encode_rle(m)
    assert text == "4x5;2 1 2 1 9 2"
    assert np.array_equal(decode_rle(text), m)
    assert encode_rle(np.zeros((3, 3), np.uint8)) == "3x3;"
    assert np.array_equal(decode_rle("3x3;"), np.zeros((3, 3), np.uint8))


def test_rle_random_masks_round_trip(rng):
    for _ in range(20):
        m = rng.integers(0, 3, size=(17, 23)).astype(np.uint8)
        assert np.array_equal(decode_rle(encode_rle(m)), m)


def test_rle_rejects_bad_input():
    with pytest.raises(ValueError):
        encode_rle(np.zeros(5))
    with pytest.raises(ValueError):
        decode_rle("2x2;1 0")
