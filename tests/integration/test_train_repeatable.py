"""A training run is a function of its data, config and seed: two runs give the same model.

Ray Data delivers blocks in whatever order its tasks finish; the photos are dealt to the workers on
the driver (``split_by_source``) and each worker orders its rows, so neither the shards nor the
batches drawn from them depend on that timing."""

from __future__ import annotations

import pytest
import torch

from vsearch.config import Config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_two_runs_train_the_same_model(tiny_config: Config, capfd: pytest.CaptureFixture) -> None:
    from jobs import train
    from vsearch.storage import ModelStore, Storage

    # Blocks of 3 rows: many read tasks per worker, finishing in an order nobody fixes.
    train_cfg = tiny_config.train.model_copy(
        update={"epochs": 2, "read_batch_size": 3, "read_tasks": 2}
    )
    cfg = tiny_config.model_copy(update={"train": train_cfg})
    assert cfg.train.num_workers == 2

    store = ModelStore(Storage(cfg.storage))
    models = [store.load(train.main(cfg, run_name=name))[1] for name in ("first", "second")]
    first, second = (m.state_dict for m in models)
    assert first.keys() == second.keys()
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differing, f"the runs' weights differ in {differing[:5]}"
    assert models[0].info["final_loss"] == models[1].info["final_loss"]

    # What a user sees: the workers' progress lines, not Ray Train's own INFO lines.
    out = "".join(capfd.readouterr())
    assert "[train] epoch 2/2" in out
    for line in ("Attempting to start training worker group", "Setting up process group"):
        assert line not in out
