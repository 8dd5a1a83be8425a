import numpy as np
import pytest

from strokeray.imaging.windows import BRAIN, STROKE, SUBDURAL, apply_window
from strokeray.learn.baselines import DensityThreshold

WINDOWS = (BRAIN, SUBDURAL, STROKE)


def test_the_density_baseline_calls_hyperdense_brain_pixels_hemorrhage():
    hu = np.full((1, 8, 8), 35.0, np.float32)
    hu[0, 2:4, 2:4] = 65.0  # blood
    hu[0, 6, 6] = 49.0  # just below the threshold
    views = np.stack([apply_window(hu[0], w) for w in WINDOWS])[None]  # (1, 3, 8, 8), as shards hold them
    base = DensityThreshold.parse("density:50", WINDOWS, 8)
    pred = base.predict(views)
    assert pred.dtype == np.uint8 and set(np.unique(pred)) == {0, 2}
    assert np.array_equal(np.argwhere(pred[0] == 2), np.argwhere(hu[0] >= 50))
    assert base.doc["windows"] == ["brain", "subdural", "stroke"] and base.version == "density-50HU"


def test_a_bundle_path_is_no_baseline_and_bad_specs_say_why():
    assert DensityThreshold.parse("runs/train/x/bundle", WINDOWS, 256) is None
    with pytest.raises(ValueError, match="density:<HU>"):
        DensityThreshold.parse("density:high", WINDOWS, 256)
    with pytest.raises(ValueError, match="outside the brain window"):
        DensityThreshold.parse("density:120", WINDOWS, 256)
    with pytest.raises(ValueError, match="brain window"):
        DensityThreshold.parse("density:50", (SUBDURAL,), 256)
