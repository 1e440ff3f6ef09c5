"""The shipped deployment files stay valid: the Serve config's args parse as the app builder's
typed argument, and cluster.yaml has what the Ray cluster launcher needs."""

from __future__ import annotations

from pathlib import Path

import yaml

from serve.app import AppArgs
from vsearch.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_serve_config_args_are_valid() -> None:
    conf = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    (app,) = conf["applications"]
    assert app["import_path"] == "serve.app:build_app"
    args = AppArgs.model_validate(app["args"])
    load_config(REPO / args.config_path, args.overrides)


def test_serve_config_is_a_valid_serve_deploy_file_for_this_graph() -> None:
    from ray.serve.schema import ServeDeploySchema

    conf = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(conf)
    assert schema.http_options.request_timeout_s and schema.http_options.request_timeout_s > 0
    (app,) = conf["applications"]
    cfg = load_config(REPO / app["args"]["config_path"], app["args"]["overrides"])
    graph = {"SearchIngress", "QueryEmbedder", "ResultReranker"}
    graph |= {f"ShardSearcher{i}" for i in range(cfg.serve.searchers)}
    named = {d["name"] for d in app["deployments"]}
    assert named == graph, f"config names {sorted(named)}, the graph has {sorted(graph)}"
    for deployment in app["deployments"]:
        scaling = deployment["autoscaling_config"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
        assert deployment["max_queued_requests"] > 0


def test_cluster_yaml_has_launcher_sections() -> None:
    conf = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in conf
    assert conf["head_node_type"] in conf["available_node_types"]


def test_prod_config_takes_its_storage_from_the_environment(monkeypatch) -> None:
    import pytest

    monkeypatch.delenv("VSEARCH_STORAGE", raising=False)
    with pytest.raises(ValueError, match="storage needs the environment variable VSEARCH_STORAGE"):
        load_config(REPO / "configs" / "prod.yaml")
    monkeypatch.setenv("VSEARCH_STORAGE", "s3://bucket/vsearch")
    cfg = load_config(REPO / "configs" / "prod.yaml")
    assert cfg.storage == "s3://bucket/vsearch" and cfg.ray.address == "auto"
    assert cfg.model.backbone_url == "s3://bucket/vsearch/models/xception_imagenet_fmap.onnx"
    # cluster.yaml's commands name it.
    assert "configs/prod.yaml" in (REPO / "cluster.yaml").read_text()
