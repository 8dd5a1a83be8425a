"""Shared fixtures: the real-data folder beside the checkout and small phantom archives."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data; skips the test when absent (fails under CI, where it must exist)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data {path} is missing under CI")
        pytest.skip(f"real data {path} is absent (tests on real CT need ../shared/data)")
    return path


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory) -> tuple[Path, object]:
    """A small TEKNOFEST-layout phantom archive with planted bad files (built once per session)."""
    from strokeray.datasets.phantom import PhantomConfig
    from strokeray.datasets.synth import SynthConfig, write_archive

    root = tmp_path_factory.mktemp("phantoms") / "archive"
    summary = write_archive(
        str(root), SynthConfig(patients=6, seed=3, phantom=PhantomConfig(size=256, slices=4), bad_files=True)
    )
    return root, summary


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
