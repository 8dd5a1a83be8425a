"""Cluster configs: launcher YAMLs against the schema inside the installed ray, KubeRay manifests
against the fields the operator requires."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_launcher_config_validates_against_rays_schema(cloud):
    config = yaml.safe_load((CLUSTER / cloud / "strokeray.yaml").read_text())
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))  # as `ray up` does: the provider's defaults filled in
    types = config["available_node_types"]
    assert config["provider"]["type"] == cloud
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no work on the head
    for group in ("cpu_workers", "gpu_workers"):
        assert types[group]["min_workers"] == 0 and types[group]["max_workers"] > 0
    assert config["idle_timeout_minutes"] > 0
    gpu = types["gpu_workers"]["node_config"]
    assert gpu.get("InstanceType", "").startswith("g") or gpu.get("guestAccelerators")
    assert all(
        "RAY_AUTH_MODE=token" in c
        for c in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]
    )


def _groups(spec: dict) -> tuple[dict, list[dict]]:
    return spec["headGroupSpec"], spec["workerGroupSpecs"]


def _check_cluster_spec(spec: dict) -> None:
    assert spec["enableInTreeAutoscaling"] is True
    head, workers = _groups(spec)
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"]
    names = {w["groupName"]: w for w in workers}
    assert set(names) == {"cpu", "gpu"}
    for w in workers:
        assert w["minReplicas"] == 0 and w["maxReplicas"] > 0 and "rayStartParams" in w
        container = w["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    gpu = names["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in names["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_kuberay_raycluster_carries_the_required_fields():
    doc = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    assert doc["spec"]["rayVersion"] == ray.__version__
    _check_cluster_spec(doc["spec"])


def test_kuberay_rayjob_runs_the_pipeline_and_shuts_down():
    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert "jobs/pipeline.py" in spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    _check_cluster_spec(spec["rayClusterSpec"])


def node_types(config: str) -> dict[str, tuple[dict, int]]:
    """Worker node types of a shipped config: name -> (Ray resources of one node, most nodes)."""
    if config in ("aws", "gcp"):
        doc = yaml.safe_load((CLUSTER / config / "strokeray.yaml").read_text())
        return {
            name: (t["resources"], t.get("max_workers", 0))
            for name, t in doc["available_node_types"].items()
            if name != doc["head_node_type"]
        }
    doc = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    out = {}
    for group in doc["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        out[group["groupName"]] = (
            {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))},
            group["maxReplicas"],
        )
    return out


@pytest.mark.parametrize("config", ["aws", "gcp", "kuberay"])
def test_every_request_of_a_gpu_run_fits_a_node_type_and_is_sized_from_zero(config):
    """No job waits forever for a node that cannot exist: each resource bundle a --gpu run asks for
    fits some worker node type (stated in the config, since GCP's provider fills in no GPU), and
    GPU work sized from the autoscaler's node types on a cluster with nothing up gets work to do."""
    from strokeray.stages.runtime import capacity
    from strokeray.stages.score import ScoreConfig, scorer_pool
    from strokeray.stages.train import DATA_TASK_CPUS, TrainConfig
    from strokeray.stages.tune import DRIVER_CPUS, SearchConfig, concurrency

    types = node_types(config)
    assert all(r for r, _ in types.values()), f"{config}: a worker type states no resources"
    train, score = TrainConfig(use_gpu=True, num_workers=1), ScoreConfig(use_gpu=True)
    requests = {
        "training worker": {"CPU": 1.0, "GPU": train.gpus_per_worker},
        "scoring actor": {"CPU": score.cpus_per_actor, "GPU": 1.0},
        "decode / ingest task": {"CPU": 1.0},
        "training data task": {"CPU": DATA_TASK_CPUS},
        "trial driver": {"CPU": DRIVER_CPUS},
    }
    for what, bundle in requests.items():
        assert any(all(node.get(k, 0) >= v for k, v in bundle.items()) for node, _ in types.values()), (config, what)
    most: dict = {}
    for node, count in types.values():
        for k, v in node.items():
            most[k] = most.get(k, 0) + v * count
    from_zero = capacity({"CPU": 0.0}, most)
    assert concurrency(SearchConfig(samples=4, use_gpu=True), from_zero)[0] == 8
    assert scorer_pool(score, from_zero, {"CPU": 0.0})[:2] == (1, 8)
