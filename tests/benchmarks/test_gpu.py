"""The GPU check's CPU-side parts: refusing a machine without a GPU, counting decision flips.
(Its GPU steps run where a GPU is: see the README's GPU check.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strokeray.benchmarks.gpu import GpuCheck, NoGpuError, cuda_device, decision_flips, table
from strokeray.cli import main

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@needs_no_gpu
def test_without_a_gpu_the_check_says_so_exits_1_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(NoGpuError, match="no CUDA device"):
        cuda_device()
    workdir = tmp_path / "gpu"
    assert main(["benchmark", "gpu", "--workdir", str(workdir)]) == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert not workdir.exists()


def test_decision_flips_count_slices_that_change_sides():
    cpu = np.array([0.10, 0.4999, 0.5001, 0.90])
    gpu = np.array([0.11, 0.5004, 0.4998, 0.90])
    assert decision_flips(cpu, gpu, 0.5) == {"slices": 4, "flips": 2, "max_abs_diff": pytest.approx(0.01)}
    assert decision_flips(cpu, cpu, 0.5)["flips"] == 0


def test_the_table_marks_failed_steps():
    check = GpuCheck(
        machine="m",
        device={"count": 1, "name": "X", "driver": "580", "cuda": "13.0", "torch": "2"},
        rows=[
            {"step": "a", "passed": True, "seconds": 1.0, "images_per_s": 10},
            {"step": "b", "passed": False, "error": "boom"},
        ],
    )
    text = table(check)
    assert "| a | pass | 1.0 | images_per_s=10 |" in text and "| b | FAIL |" in text and "error=boom" in text
