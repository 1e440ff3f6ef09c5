"""The shipped deployment files stay valid: the Serve config's args parse as the app builder's
typed argument, and cluster.yaml has what the Ray cluster launcher needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from serve.app import AppArgs, auth_settings
from vsearch.config import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shipped serve config reads configs/prod.yaml, whose storage comes from the environment.
    monkeypatch.setenv("VSEARCH_STORAGE", "s3://bucket/vsearch")


def test_serve_config_args_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    (app,) = conf["applications"]
    assert app["import_path"] == "serve.app:build_app"
    args = AppArgs.model_validate(app["args"])
    cfg = load_config(REPO / args.config_path, args.overrides)
    # The app decides on token auth from serve.host: it must be where Serve really listens.
    http = conf["http_options"]
    assert (cfg.serve.host, cfg.serve.port) == (http["host"], http["port"])
    # As shipped it listens on every interface, so it will not start without a token.
    monkeypatch.delenv(cfg.serve.auth_token_env, raising=False)
    with pytest.raises(ValueError, match="needs an API token"):
        auth_settings(cfg)
    monkeypatch.setenv(cfg.serve.auth_token_env, "t0k3n")
    assert auth_settings(cfg)["require_auth"] is True


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
    for name, node in conf["available_node_types"].items():
        if name != conf["head_node_type"]:
            assert 0 <= node["min_workers"] <= node["max_workers"] <= conf["max_workers"]


def test_cluster_yaml_names_only_files_that_exist_and_keeps_the_dashboard_private() -> None:
    text = (REPO / "cluster.yaml").read_text()
    conf = yaml.safe_load(text)
    for source in conf.get("file_mounts", {}).values():
        assert (REPO / source).exists(), source
    # Every repository file a command or comment names is there.
    named = set(
        re.findall(r"\b((?:configs|serve|deploy)/[\w./-]+\.(?:yaml|yml|service|timer))", text)
    )
    assert named, "cluster.yaml names no config file"
    assert all((REPO / n).is_file() for n in named), sorted(
        n for n in named if not (REPO / n).is_file()
    )
    head = " ".join(conf["head_start_ray_commands"])
    # The dashboard (job submission, Serve deploys) listens on the head's loopback only.
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    # Every node starts Ray in the Serve mode vsearch uses when it starts Ray itself.
    from vsearch.config import ServeConfig
    from vsearch.runtime.cluster import serve_env

    env = serve_env(ServeConfig())
    assert env
    for commands in (conf["head_start_ray_commands"], conf["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert all(f"{key}={value}" in start for key, value in env.items()), start


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
