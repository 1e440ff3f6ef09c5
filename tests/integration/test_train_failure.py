"""Fault tolerance of training: a worker process dies mid-run and Ray Train restarts the workers
from the last checkpoint (``train.max_failures``), driven by the ``train.fail_at_epoch`` test hook."""

from __future__ import annotations

import json

import pytest

from vsearch.config import Config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 6
FAIL_AT = 3  # 0-based: the last rank exits after training the 4th epoch, before reporting it


def test_worker_death_resumes_from_last_checkpoint(tiny_config: Config) -> None:
    from jobs import train
    from vsearch.storage import ModelStore, Storage

    train_cfg = tiny_config.train.model_copy(
        update={"epochs": EPOCHS, "fail_at_epoch": FAIL_AT, "max_failures": 1}
    )
    cfg = tiny_config.model_copy(update={"train": train_cfg})
    assert cfg.train.num_workers == 2

    version = train.main(cfg, run_name="crash-once")

    storage = Storage(cfg.storage)
    marker = json.loads(storage.read_text("checkpoints/crash-once/injected_failure.json"))
    assert marker == {"epoch": FAIL_AT, "rank": 1}  # the hook fired, on rank 1
    _, artifact = ModelStore(storage).load(version)
    info = artifact.info
    assert info["epochs_done"] == EPOCHS
    # The restarted workers began from a checkpoint of the first attempt, not from epoch 0: the
    # last one reported before the failure (FAIL_AT), or an earlier one if Ray Train's controller
    # was too slow to poll in the hook's grace time.
    assert 0 < info["resumed_from_epoch"] <= FAIL_AT
