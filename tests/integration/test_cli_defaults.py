"""The `vsearch` command with no ``--config``: the built-in defaults (storage ``./var`` of the
directory it runs from, a private local Ray cluster) carry a tiny run through every offline job."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsearch.config import Config, load_config

TINY = [
    "data.synthetic.categories=2",
    "data.synthetic.products_per_category=4",
    "data.synthetic.views_per_product=3",
    "data.synthetic.test_views_per_product=1",
    "data.synthetic.image_size=64",
    "data.synthetic.duplicates=1",
    "model.arch=cnn_tiny",
    "model.input_size=32",
    "model.embed_dim=16",
    "train.epochs=1",
    "train.products_per_batch=4",
    "train.images_per_product=2",
    "index.embed_actors=1",
]


def test_default_storage_is_an_absolute_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    expected = f"file://{tmp_path.resolve()}/var"
    assert Config().storage == expected
    assert load_config(None, []).storage == expected
    assert (
        load_config(None, ["storage=elsewhere/x"]).storage
        == f"file://{tmp_path.resolve()}/elsewhere/x"
    )


@pytest.mark.ray
@pytest.mark.slow
def test_cli_runs_every_offline_job_on_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs.cli import main

    monkeypatch.chdir(tmp_path)
    overrides = [arg for item in TINY for arg in ("--set", item)]
    jobs = (["generate"], ["train", "--run-name", "defaults"], ["reindex"], ["evaluate"], ["dedup"])
    for command in jobs:
        assert main([*command, *overrides]) == 0, command

    var = tmp_path / "var"
    assert (var / "datasets" / "synthetic" / "spec.json").is_file()
    assert list((var / "checkpoints" / "defaults").glob("checkpoint_*"))
    model = (var / "models" / "LATEST").read_text().strip()
    assert (var / "models" / model / "model.pt").is_file()
    index = (var / "indexes" / "CURRENT").read_text().strip()
    assert (var / "indexes" / index / "manifest.json").is_file()
    assert len(list((var / "reports").glob("dedup-*.json"))) == 1
    assert list((var / "reports").glob("evaluate-*.json"))
