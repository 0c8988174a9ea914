"""cluster.yaml (and its KubeRay twin): a complete Azure launcher config whose worker nodes
declare the call-slot resource the actors request."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from actors.cluster import LOW_IDLE_SYSTEM_CONFIG
from storage.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
KUBERAY = ROOT / "gateway" / "deploy" / "kuberay-raycluster.yaml"


def test_worker_nodes_declare_the_call_slot_resource() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    slot = Settings().actors.call_slot_resource
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get(slot, 0) == 0  # gateways only; calls go to workers
    workers = [t for name, t in node_types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"][slot] > 0 for t in workers)


def test_it_is_a_complete_azure_launcher_config() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert config["provider"]["type"] == "azure"
    assert config["provider"]["location"] and config["provider"]["resource_group"]
    assert config["idle_timeout_minutes"] > 0 and config["max_workers"] >= 1
    for name, node_type in config["available_node_types"].items():
        arm = node_type["node_config"]["azure_arm_parameters"]
        assert arm["vmSize"] and arm["imageOffer"], name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]
    for key in ("ssh_user", "ssh_private_key", "ssh_public_key"):
        assert config["auth"][key]


def test_every_node_installs_this_checkout_and_the_head_runs_a_gateway() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert config["file_mounts"]["~/rtvoice"] == "."
    assert any("pip install" in c and "-e ~/rtvoice" in c for c in config["setup_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "rtvoice serve" in head and "RTVOICE_RAY_ADDRESS=auto" in head
    workers = " ".join(config["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in workers


def test_every_ray_start_lowers_the_idle_cost_as_local_ray_does() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        for name, value in LOW_IDLE_SYSTEM_CONFIG.items():
            env_value = str(int(value)) if isinstance(value, bool | int) else str(value)
            assert f"RAY_{name}={env_value}" in start, (name, start)


def test_head_fault_tolerance_through_an_external_redis_is_documented() -> None:
    text = CLUSTER_YAML.read_text()
    assert "RAY_REDIS_ADDRESS=" in text and "--redis-password" in text


def test_the_kuberay_manifest_has_the_same_shape() -> None:
    manifest = yaml.safe_load(KUBERAY.read_text())
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    slot = Settings().actors.call_slot_resource
    assert manifest["kind"] == "RayCluster" and manifest["spec"]["enableInTreeAutoscaling"]

    def slots(start_params: dict[str, str]) -> int:
        return int(json.loads(json.loads(start_params["resources"]))[slot])

    assert slots(manifest["spec"]["headGroupSpec"]["rayStartParams"]) == 0
    [calls] = manifest["spec"]["workerGroupSpecs"]
    node_type = config["available_node_types"][calls["groupName"]]
    assert slots(calls["rayStartParams"]) == node_type["resources"][slot]
    assert (calls["minReplicas"], calls["maxReplicas"]) == (
        node_type["min_workers"],
        node_type["max_workers"],
    )
    assert manifest["spec"]["gcsFaultToleranceOptions"]["redisAddress"]
