"""The ingest benchmark's storage row: both shard forms written and read back from real slices."""

import math

from strokeray.benchmarks.ingest import make_archive, storage


def test_storage_times_both_forms_of_the_same_slices(tmp_path):
    paths = make_archive(tmp_path / "a", 8, seed=3)[:4]
    got = storage(paths, repeats=1)
    assert set(got) == {f"{form}_{what}" for form in ("binary", "tensor_list") for what in ("write", "read", "kb")}
    assert all(math.isfinite(v) and v > 0 for v in got.values())
    # the same pixels, the same compression: the two files hold about the same bytes
    assert 0.5 < got["binary_kb"] / got["tensor_list_kb"] < 1.5
