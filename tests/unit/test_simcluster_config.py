"""The simulated cluster's autoscaling config (no cluster started): Ray's schema accepts it, the
worker node types are cluster.yaml's, and each carries the label that tells node types apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vsearch.runtime.simcluster import (
    DEFAULT_NODE_TYPES,
    HEAD_NODE_TYPE,
    NODE_TYPE_LABEL,
    autoscaling_config,
    node_type_of,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_config_is_valid_and_names_the_node_types_of_cluster_yaml() -> None:
    from ray.autoscaler._private.util import validate_config

    config = autoscaling_config(DEFAULT_NODE_TYPES, "10.0.0.1:4321", 0.1, head_resources={"CPU": 0})
    validate_config(config)  # raises when Ray's schema rejects it
    assert config["provider"]["type"] == "fake_multinode"
    assert config["provider"]["gcs_address"] == "10.0.0.1:4321"  # not the default port 6379
    assert config["idle_timeout_minutes"] == 0.1
    launcher = yaml.safe_load((REPO / "cluster.yaml").read_text())
    workers = set(launcher["available_node_types"]) - {launcher["head_node_type"]}
    assert set(config["available_node_types"]) == workers | {HEAD_NODE_TYPE}
    assert config["head_node_type"] == HEAD_NODE_TYPE
    for name in workers:
        spec = config["available_node_types"][name]
        assert spec["min_workers"] == 0
        assert spec["labels"][NODE_TYPE_LABEL] == name
        assert spec["resources"]["CPU"] == 1
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    assert config["max_workers"] == 3


def test_bad_node_types_are_refused() -> None:
    with pytest.raises(ValueError, match="head"):
        autoscaling_config({HEAD_NODE_TYPE: {"resources": {"CPU": 1}}}, "h:1", 1)
    with pytest.raises(ValueError, match="min_workers"):
        autoscaling_config({"w": {"resources": {}, "min_workers": 3, "max_workers": 1}}, "h:1", 1)
    with pytest.raises(ValueError, match="unknown"):
        autoscaling_config({"w": {"resource": {"CPU": 1}}}, "h:1", 1)


def test_node_types_are_read_from_the_label() -> None:
    assert node_type_of({"Labels": {NODE_TYPE_LABEL: "gpu_worker"}}) == "gpu_worker"
    assert node_type_of({"Labels": {"ray.io/node-id": "f" * 56}}) is None
