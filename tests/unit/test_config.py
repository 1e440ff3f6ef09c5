from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vsearch.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.yaml", "tiny.yaml", "grocery.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert cfg.storage.startswith("file:///")


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, ["train.epochs=3", "data.source=grocery", "serve.top_k=5"])
    assert cfg.train.epochs == 3
    assert cfg.data.source == "grocery"
    assert cfg.serve.top_k == 5
    assert cfg.ray.address == "local"


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError, match="trian"):
        Config.model_validate({"trian": {"epochs": 1}})
    with pytest.raises(ValidationError, match="epoch"):
        load_config(None, ["train.epoch=1"])


def test_bad_override_syntax() -> None:
    with pytest.raises(ValueError, match=r"section\.key=value"):
        load_config(None, ["train.epochs"])


def test_relative_storage_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, ["storage=var/x"]).storage == f"file://{tmp_path}/var/x"
    assert load_config(None, ["storage=s3://bucket/root/"]).storage == "s3://bucket/root"


def test_test_views_must_leave_train_views() -> None:
    with pytest.raises(ValidationError, match="test_views_per_product"):
        load_config(
            None, ["data.synthetic.views_per_product=2", "data.synthetic.test_views_per_product=2"]
        )
