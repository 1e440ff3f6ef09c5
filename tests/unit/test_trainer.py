"""``MetricTrainer``: it learns on a tiny synthetic catalogue, its schedule and its losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsearch.config import ModelConfig, SyntheticConfig, TrainConfig
from vsearch.data.synthetic import generate_synthetic
from vsearch.imaging import decode_image
from vsearch.models.artifact import build_network
from vsearch.models.embedder import Embedder
from vsearch.models.losses import SupConLoss
from vsearch.models.registry import backbone_spec
from vsearch.training import MetricTrainer, TrainingSet
from vsearch.training.trainer import EpochStats

SMALL = SyntheticConfig(
    categories=2,
    products_per_category=4,
    views_per_product=4,
    test_views_per_product=1,
    image_size=64,
    duplicates=0,
)
MODEL = ModelConfig(arch="cnn_tiny", embed_dim=32, input_size=32)
SPEC = backbone_spec(MODEL.arch, MODEL.input_size)


def _network(train_set: TrainingSet) -> torch.nn.Module:
    return build_network(MODEL, len(train_set.category_names))


@pytest.fixture(scope="module")
def data() -> tuple[TrainingSet, dict[str, np.ndarray], object]:
    gen = generate_synthetic(SMALL)
    ds = gen.dataset
    decoded = {uri: decode_image(b) for uri, b in gen.images.items()}
    train_q = ds.queries_of("train")
    return (
        TrainingSet.from_tables(ds.catalog, train_q, ds.clicks, decoded, SPEC.preprocess),
        decoded,
        ds,
    )


def _train_recall(model: torch.nn.Module, decoded: dict[str, np.ndarray], ds: object) -> float:
    """Recall@1 of the train-split views against the catalogue images."""
    emb = Embedder(model)
    cat = emb.embed([decoded[u] for u in ds.catalog["image_uri"].to_pylist()])
    q_rows = ds.queries_of("train")
    q = emb.embed([decoded[u] for u in q_rows["image_uri"].to_pylist()])
    best = np.asarray(ds.catalog["product_id"].to_pylist())[(q @ cat.T).argmax(1)]
    return float((best == np.asarray(q_rows["product_id"].to_pylist())).mean())


def test_a_few_epochs_reduce_the_loss_and_improve_train_recall(data) -> None:
    train_set, decoded, ds = data
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = _network(train_set)
    before = _train_recall(model, decoded, ds)
    cfg = TrainConfig(
        epochs=24,
        products_per_batch=4,
        images_per_product=4,
        lr=3e-3,
        warmup_epochs=1,
    )
    trainer = MetricTrainer(model, cfg, train_set)
    stats = [trainer.train_epoch(e) for e in range(cfg.epochs)]
    first = np.mean([s.label_loss for s in stats[:3]])
    last = np.mean([s.label_loss for s in stats[-3:]])
    assert last < first
    assert _train_recall(model, decoded, ds) > before + 0.1
    assert set(stats[-1].as_dict()) >= {"loss", "lr", "images_per_s"}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"label_loss": "batch_hard", "augment": "basic", "lr_schedule": "constant"}],
)
def test_training_is_deterministic_per_seed(data, overrides: dict) -> None:
    train_set, _, _ = data
    cfg = TrainConfig(epochs=2, products_per_batch=4, images_per_product=2, **overrides)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        trainer = MetricTrainer(_network(train_set), cfg, train_set)
        losses.append([trainer.train_epoch(e).loss for e in range(2)])
    assert losses[0] == losses[1]


def test_lr_schedule_warms_up_then_decays(data) -> None:
    train_set, _, _ = data
    cfg = TrainConfig(epochs=10, lr=1e-3, warmup_epochs=2, min_lr_ratio=0.1)
    trainer = MetricTrainer(_network(train_set), cfg, train_set)
    lrs = [trainer.lr_at(p) for p in np.linspace(0, 10, 41)]
    peak = int(np.argmax(lrs))
    assert lrs[0] < 1e-5 and lrs[peak] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[: peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) <= 0)
    assert lrs[-1] == pytest.approx(1e-4)
    flat = MetricTrainer(
        _network(train_set),
        cfg.model_copy(update={"lr_schedule": "constant", "warmup_epochs": 0}),
        train_set,
    )
    assert flat.lr_at(0) == flat.lr_at(9.5) == pytest.approx(1e-3)


def test_supcon_prefers_separated_labels() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]), dim=1
    )
    bad = good[[0, 2, 1, 3]]
    loss = SupConLoss(0.1)
    assert loss(good, labels) < loss(bad, labels)
    assert loss.last_active == 1.0
    loss(good, labels)
    assert loss.last_active == 0.0
    # No positive pair at all: a zero loss that still has a gradient path.
    leaf = good.clone().requires_grad_(True)
    single = loss(leaf, torch.arange(4))
    assert float(single.detach()) == 0.0 and single.grad_fn is not None


def test_epoch_stats_as_dict_has_floats() -> None:
    stats = EpochStats(1, 2, 0.5, 0.4, 0.1, 0.0, 0.0, 0.9, 100.0)
    assert stats.as_dict()["lr"] == 0.0


def test_gpu_use_follows_the_setting_and_the_cluster() -> None:
    from vsearch.runtime.training import wants_gpu

    assert wants_gpu("auto", 2, 2) and not wants_gpu("auto", 2, 1) and not wants_gpu("auto", 1, 0)
    assert not wants_gpu(False, 2, 8) and wants_gpu(True, 2, 2)
    with pytest.raises(ValueError, match="1 GPU\\(s\\) for 2 workers"):
        wants_gpu(True, 2, 1)


def test_checkpoints_every_n_epochs_and_always_the_last() -> None:
    from vsearch.runtime.training import saves_checkpoint

    saved = [e for e in range(12) if saves_checkpoint(e, 12, 5, stopping=False)]
    assert saved == [4, 9, 11]
    assert [e for e in range(3) if saves_checkpoint(e, 3, 1, False)] == [0, 1, 2]
    assert saves_checkpoint(6, 12, 5, stopping=True)  # a time budget ends the run here
