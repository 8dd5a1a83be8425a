"""Sizing work from what a cluster can hold: ``runtime.capacity`` and the GPU sizing of tune and score."""

from __future__ import annotations

import os

import pytest

from strokeray.stages.runtime import capacity, need_gpus
from strokeray.stages.score import ScoreConfig, scorer_pool
from strokeray.stages.tune import SearchConfig, concurrency, trial_train_config

# A head with no CPU and nothing else up, with an autoscaler offering 16 CPU nodes of 16 CPUs and
# 8 GPU nodes of 8 CPUs and one GPU each (the shipped AWS and GCP configs).
FROM_ZERO = capacity({"CPU": 0.0}, {"CPU": 16 * 16 + 8 * 8, "GPU": 8})


def test_capacity_is_the_larger_of_what_is_up_and_what_the_autoscaler_adds():
    assert FROM_ZERO == {"CPU": 320.0, "GPU": 8.0}
    assert capacity({"CPU": 2.0, "memory": 1e9}, None) == {"CPU": 2.0, "memory": 1e9}  # no autoscaler
    assert capacity({"CPU": 4.0, "GPU": 2.0}, {"CPU": 2, "GPU": 1}) == {"CPU": 4.0, "GPU": 2.0}


def test_gpu_work_is_sized_from_a_cluster_scaling_from_zero():
    """Sized from what is up, a search refused ("0 GPUs") and scoring got one actor for good."""
    search = SearchConfig(samples=4, use_gpu=True)  # 2 backbones x 4 samples, one GPU each
    assert concurrency(search, FROM_ZERO) == (8, 1.0)
    assert scorer_pool(ScoreConfig(use_gpu=True), FROM_ZERO, {"CPU": 0.0}) == (1, 8, 1)
    assert scorer_pool(ScoreConfig(use_gpu=True, actors=3), FROM_ZERO, {"CPU": 0.0}) == (3, 3, 1)  # as asked
    with pytest.raises(RuntimeError, match="needs 1 GPU.*cluster has 0"):
        concurrency(search, capacity({"CPU": 2.0}, None))  # no GPU now, no autoscaler: a clear error
    with pytest.raises(RuntimeError, match="scoring actor"):
        scorer_pool(ScoreConfig(use_gpu=True), capacity({"CPU": 2.0}, None), {"CPU": 2.0})
    # CPU scoring keeps its fixed pool, its threads the CPUs that are up
    assert scorer_pool(ScoreConfig(), capacity({"CPU": 2.0}, None), {"CPU": 2.0}) == (1, 1, 2)


def test_fractional_gpus_pack_small_trials_onto_one_gpu():
    search = SearchConfig(samples=4, use_gpu=True, gpus_per_trial=0.25)
    assert concurrency(search, {"CPU": 8.0, "GPU": 1.0})[0] == 4
    assert concurrency(search, {"CPU": 8.0, "GPU": 2.0})[0] == 8  # never more than the trials
    params = {
        "backbone": "resnet18",
        "batch_size": 8,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "input_size": 64,
        "augment": 0.0,
    }
    train = trial_train_config(search, params, cpus_per_worker=1.0)
    assert (train.use_gpu, train.num_workers, train.gpus_per_worker) == (True, 1, 0.25)
    two = SearchConfig(workers_per_trial=2, use_gpu=True)
    assert trial_train_config(two, params, 1.0).gpus_per_worker == 1.0 and two.trial_gpus() == 2.0
    with pytest.raises(ValueError, match="fraction of one GPU with one worker"):
        SearchConfig(workers_per_trial=2, use_gpu=True, gpus_per_trial=0.5)  # DDP ranks cannot share a GPU
    assert need_gpus({"GPU": 1.0}, 0.3, "trial") == 3


@pytest.fixture
def second_ray(tmp_path):
    """Another Ray head on this machine, as when a test suite runs beside a run."""
    import shutil
    import subprocess
    import tempfile

    from ..conftest import _free_port, ray_head_command, stop_processes_naming

    temp_dir = tempfile.mkdtemp(prefix="sr2", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    cmd = ray_head_command(temp_dir, "--port=0", "--num-cpus=1", f"--dashboard-port={_free_port()}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        yield
    finally:
        stop_processes_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_workers_find_their_own_clusters_state_api_beside_another_ray(ray_local, second_ray):
    """Ray Train's placement-group cleaner asks the State API whether a run's controller lives; on
    a machine with two Rays, a worker that scans for its cluster fails ("Found multiple active Ray
    instances") and the placement groups of stopped trials are never removed."""
    import ray

    @ray.remote(num_cpus=0)
    class Alive:
        def ping(self) -> bool:
            return True

    @ray.remote(num_cpus=0)
    def state_of(actor_id: str) -> str:
        from ray.util.state import get_actor

        return get_actor(actor_id, timeout=30).state

    actor = Alive.remote()
    assert ray.get(actor.ping.remote())
    assert ray.get(state_of.remote(actor._actor_id.hex())) == "ALIVE"


def test_a_local_run_starts_its_own_ray_despite_a_dead_clusters_address_file():
    """A `ray start` cluster that died without `ray stop` leaves its address in
    RAY_TMPDIR/ray/ray_current_cluster; Ray's default ray.init() would join that address (and
    fail: "When connecting to an existing cluster, num_cpus ... must not be provided")."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from ..conftest import stop_processes_naming

    temp_dir = tempfile.mkdtemp(prefix="sr3", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    os.makedirs(f"{temp_dir}/ray")
    with open(f"{temp_dir}/ray/ray_current_cluster", "w") as fh:
        fh.write("127.0.0.1:9")  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = temp_dir
    code = (
        "import ray\nfrom strokeray.stages.runtime import ensure_ray\n"
        "ensure_ray(1)\nprint('CPUS', int(ray.cluster_resources()['CPU']))\nray.shutdown()\n"
    )
    try:
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    finally:
        stop_processes_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert run.returncode == 0 and "CPUS 1" in run.stdout, run.stderr[-3000:]


def test_with_tensors_gives_ray_arrays_and_leaves_other_columns():
    import numpy as np

    from strokeray.stages.runtime import with_tensors

    from ..io.test_shard_schema import image_table

    images = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    table = with_tensors(image_table(images))
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [0, 1]
    assert rows[1]["cls_image"].shape == (2, 3, 3) and np.array_equal(rows[1]["cls_image"], images[1])
    assert with_tensors(table).equals(table)  # already tensors: unchanged
    assert with_tensors(image_table(images).slice(0, 0))["cls_image"].to_pylist() == []


def test_warm_workers_import_in_one_task_a_free_cpu(ray_local):
    import time

    import ray

    from strokeray.stages.runtime import warm_workers

    def free_cpus() -> int:  # Ray reports a finished task's CPU back after a moment
        deadline = time.monotonic() + 30
        while not (free := int(ray.available_resources().get("CPU", 0))) and time.monotonic() < deadline:
            time.sleep(0.2)
        return free

    free = free_cpus()
    refs = warm_workers("strokeray.imaging.rle")
    assert free >= 1 and len(refs) == free and ray.get(refs) == [None] * free  # one per free CPU
    free_cpus()
    with pytest.raises(ray.exceptions.RayTaskError, match="ModuleNotFoundError"):  # it really imports
        ray.get(warm_workers("strokeray.no_such_module"))
