"""Autoscaling from zero on this machine: a Ray head that takes no work, started with an autoscaling
config whose worker node types are the AWS launcher config's (same names, min 0, one CPU a node),
launched by Ray's FakeMultiNodeProvider (each node a real raylet here). `strokeray ingest` sent to
it makes the autoscaler start CPU workers, every file is ingested, no GPU node is started for CPU
work, and the workers are released after the idle timeout."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ..conftest import _free_port, ray_head_command, stop_processes_naming

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
BIN = Path(sys.executable).parent
IDLE_S = 10  # the fake cluster's idle timeout (the AWS config's is 10 minutes)
pytestmark = pytest.mark.timeout(900)

NODES = """
import json, ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"alive": n["Alive"], "resources": n["Resources"], "id": n["NodeID"]} for n in ray.nodes()]))
"""


def fake_cluster_config(launcher: dict, gcs_address: str) -> dict:
    """``launcher``'s worker node types for FakeMultiNodeProvider: the same names, min 0, one CPU a
    node (a GPU type keeps its GPU count, so a CPU task that started one would show). The provider
    is named as an external module: the wheel lacks the defaults file its short name loads."""
    types: dict = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for name, node in launcher["available_node_types"].items():
        if name != launcher["head_node_type"]:
            gpus = {"GPU": node["resources"]["GPU"]} if "GPU" in node["resources"] else {}
            types[name] = {"resources": {"CPU": 1, **gpus}, "node_config": {}, "min_workers": 0, "max_workers": 2}
    provider = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
    commands = ("initialization", "setup", "head_setup", "worker_setup", "head_start_ray", "worker_start_ray")
    return {
        "cluster_name": "strokeray-fake",
        "max_workers": 4,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_S / 60,
        # use_node_id_as_ip: every fake node has this machine's IP, so the autoscaler tells them apart by id
        "provider": {"type": "external", "module": provider, "gcs_address": gcs_address, "use_node_id_as_ip": True},
        "auth": {},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **{f"{c}_commands": [] for c in commands},
    }


@pytest.fixture(scope="module")
def autoscaling_head():
    """The head (no CPUs, token auth) with the fake autoscaler; stopped, with every node it started, after."""
    launcher = yaml.safe_load((CLUSTER / "aws" / "strokeray.yaml").read_text())
    temp_dir = tempfile.mkdtemp(prefix="sra", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    port = _free_port()
    config = Path(temp_dir) / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(fake_cluster_config(launcher, f"127.0.0.1:{port}")))
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    cmd = ray_head_command(temp_dir, "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=0")
    cmd += [f"--autoscaling-config={config}", "--include-dashboard=false"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"env": {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, "temp_dir": temp_dir, "launcher": launcher}
    finally:
        stop_processes_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def nodes(head: dict) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-c", NODES], env=head["env"], capture_output=True, text=True, timeout=120, cwd="/tmp"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def workers(found: list[dict]) -> list[dict]:
    """The nodes that offer CPUs (the head offers none)."""
    return [n for n in found if n["resources"].get("CPU", 0) > 0]


def test_work_starts_cpu_workers_from_zero_and_idle_ones_are_released(autoscaling_head, phantom_archive, tmp_path):
    head = autoscaling_head
    assert workers(nodes(head)) == []  # from zero: only the head, which takes no work
    src, synth = phantom_archive
    out = tmp_path / "ingest"
    run = subprocess.run(
        [str(BIN / "strokeray"), "ingest", str(src), str(out), "--files-per-chunk", "40"],
        env=head["env"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    shards = [p for p in (out / "shards").glob("*.parquet")]
    slices = sum(pq.read_metadata(p).num_rows for p in shards)
    quarantined = pq.read_table(out / "quarantine.parquet").num_rows
    # every file once: the phantoms' slices and the planted files that decode, the rest quarantined
    assert slices == synth.slices + sum(p["expect"] == "ok" for p in synth.planted)
    assert quarantined == sum(p["expect"] != "ok" for p in synth.planted)

    started = workers(nodes(head))
    assert started, "no worker node was started for the ingest"
    assert all("GPU" not in n["resources"] for n in started), "CPU work started a GPU node"
    deadline = time.time() + IDLE_S + 120
    while time.time() < deadline and [n for n in workers(nodes(head)) if n["alive"]]:
        time.sleep(3)
    status = subprocess.run([str(BIN / "ray"), "status", "-v"], env=head["env"], capture_output=True, text=True)
    assert not [n for n in workers(nodes(head)) if n["alive"]], f"idle workers were not released:\n{status.stdout}"
