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


def test_cluster_yaml_has_launcher_sections() -> None:
    conf = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in conf
    assert conf["head_node_type"] in conf["available_node_types"]
