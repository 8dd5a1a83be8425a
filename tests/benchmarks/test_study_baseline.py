"""The benchmark's baseline must stay a working re-implementation of the study's path."""

import numpy as np

from strokeray.benchmarks.ingest import floor, make_archive
from strokeray.benchmarks.study_baseline import study_preprocess


def test_study_path_and_floor_run(tmp_path):
    paths = make_archive(tmp_path / "a", 8, seed=1)
    assert len(paths) == 8
    out = study_preprocess(paths[0], str(tmp_path))
    assert out.shape == (224, 224) and out.dtype == np.uint8
    assert out.max() > 0 and (out > 0).mean() > 0.3  # the cropped brain fills the image
    assert floor(paths) > 0
