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
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:])


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
