"""Backbones behind one contract, the heads (soft box mask), the network and the artifact."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from vsearch.config import ModelConfig
from vsearch.models import available_backbones, backbone_spec, create_backbone
from vsearch.models.artifact import ModelArtifact, build_network, initial_artifact, sha256_hex
from vsearch.models.heads import SearchHead, soft_box_mask
from vsearch.models.losses import SupConLoss


def test_registry_lists_and_rejects() -> None:
    assert {"cnn_tiny", "cnn_small", "xception_onnx"} <= set(available_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        create_backbone("nope", 32)
    with pytest.raises(ValueError, match="model bytes are needed"):
        create_backbone("xception_onnx", 224)


def test_registry_imports_no_model_module() -> None:
    code = (
        "import sys, vsearch.models.registry as r; r.available_backbones(); "
        "print(any(m in sys.modules for m in "
        "('vsearch.models.backbones', 'vsearch.models.onnx_backbone')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_specs_declare_the_contract() -> None:
    tiny = backbone_spec("cnn_tiny", 32)
    assert (tiny.backend, tiny.channels, tiny.grid, tiny.trainable) == ("torch", 32, 4, True)
    x = backbone_spec("xception_onnx", 64)  # ONNX graphs fix their own input size
    assert (x.input_size, x.channels, x.grid, x.trainable) == (224, 2048, 7, False)
    assert x.mean == (0.5, 0.5, 0.5) and x.std == (0.5, 0.5, 0.5)  # pixel / 127.5 - 1
    img = np.full((10, 12, 3), 255, np.uint8)
    assert torch.allclose(x.preprocess([img]), torch.ones(1, 3, 224, 224))
    with pytest.raises(ValueError, match="multiple of 8"):
        backbone_spec("cnn_tiny", 36)


@pytest.mark.parametrize("name", ["cnn_tiny", "cnn_small"])
def test_network_outputs_are_consistent(name: str) -> None:
    cfg = ModelConfig(arch=name, embed_dim=24, input_size=32)
    net = build_network(cfg, categories=3, products=5).eval()
    out = net(torch.randn(2, 3, 32, 32))
    assert out.embedding.shape == (2, 24) and out.box.shape == (2, 4)
    assert out.category_logits.shape == (2, 3) and out.product_logits.shape == (2, 5)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2))
    assert bool((out.box[:, 2:] > out.box[:, :2]).all())


def test_soft_box_mask_is_a_soft_crop() -> None:
    box = torch.tensor([[0.25, 0.0, 0.75, 0.5]])
    hard = soft_box_mask(box, grid=8, steepness=200.0)[0, 0]
    expected = torch.zeros(8, 8)
    expected[0:4, 2:6] = 1
    torch.testing.assert_close(hard, expected, atol=1e-3, rtol=0)
    soft = soft_box_mask(box, grid=8, steepness=5.0)[0, 0]
    assert float(soft.min()) > 0 and float(soft.max()) < 1
    assert float(soft[1, 3]) > float(soft[6, 3])


def test_metric_loss_alone_reaches_the_box_head() -> None:
    torch.manual_seed(0)
    head = SearchHead(channels=16, embed_dim=8, categories=0, localise=True, steepness=10.0)
    fmap = torch.randn(8, 16, 5, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = SupConLoss(0.1)(head(fmap).embedding, labels)
    loss.backward()
    grads = [p.grad for p in head.localiser.parameters()]
    assert all(g is not None for g in grads)
    assert float(sum(g.abs().sum() for g in grads)) > 0
    off = SearchHead(channels=16, embed_dim=8, localise=False)
    assert off.localiser is None
    torch.testing.assert_close(off(fmap).box, torch.tensor([[0.0, 0, 1, 1]]).expand(8, 4))


def test_artifact_round_trip_gives_identical_outputs() -> None:
    cfg = ModelConfig(arch="cnn_tiny", embed_dim=16, input_size=32, seed=3)
    art = initial_artifact(cfg, ["a", "b"], ["p1", "p2", "p3"])
    art.info["epochs_done"] = 0
    again = ModelArtifact.from_bytes(art.to_bytes())
    assert again.config == cfg and again.info == {"epochs_done": 0}
    assert again.categories == ["a", "b"] and again.products == ["p1", "p2", "p3"]
    x = torch.randn(2, 3, 32, 32)
    a, b = art.build()(x), again.build()(x)
    for left, right in zip(a, b, strict=True):
        torch.testing.assert_close(left, right)


def test_initial_artifact_is_seeded() -> None:
    cfg = ModelConfig(arch="cnn_tiny", embed_dim=16, seed=5)
    a, b = initial_artifact(cfg, ["c"]), initial_artifact(cfg, ["c"])
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_artifact_rejects_unknown_format() -> None:
    import io

    buf = io.BytesIO()
    torch.save({"format": 99}, buf)
    with pytest.raises(ValueError, match="format 99"):
        ModelArtifact.from_bytes(buf.getvalue())


def test_onnx_backbone_runs_frozen_and_is_verified(tiny_onnx: bytes) -> None:
    data = tiny_onnx
    backbone = create_backbone("xception_onnx", 224, data)
    fmap = backbone(torch.randn(2, 3, 224, 224))
    assert fmap.shape == (2, 2048, 7, 7) and bool((fmap >= 0).all())
    cfg = ModelConfig(arch="xception_onnx", embed_dim=16, head_hidden=32)
    art = initial_artifact(cfg, ["a", "b"], backbone_bytes=data)
    assert art.backbone_sha256 == sha256_hex(data)
    assert not any(k.startswith("backbone") for k in art.state_dict)  # heads only
    embedder = ModelArtifact.from_bytes(art.to_bytes()).embedder(data)
    pred = embedder.predict([np.zeros((50, 40, 3), np.uint8), np.full((30, 30, 3), 200, np.uint8)])
    assert pred.embeddings.shape == (2, 16) and pred.category_probs.shape == (2, 2)
    np.testing.assert_allclose(pred.category_probs.sum(1), 1.0, rtol=1e-5)
    maps = embedder.feature_maps([np.zeros((50, 40, 3), np.uint8)])
    assert maps.shape == (1, 1, 2048, 7, 7)  # (views, n, C, g, g)
    np.testing.assert_allclose(
        embedder.predict_maps(maps).embeddings[0], pred.embeddings[0], rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="refusing a different backbone"):
        art.build(data + b"x")
    with pytest.raises(ValueError, match="pass its bytes"):
        art.build()
    with pytest.raises(ValueError, match="ONNX backbone"):
        initial_artifact(cfg, ["a"])


def test_views_average_the_embeddings_of_centre_crops() -> None:
    from vsearch.imaging import centre_crop
    from vsearch.models.embedder import Embedder

    cfg = ModelConfig(arch="cnn_tiny", embed_dim=8, input_size=32)
    torch.manual_seed(0)
    net = build_network(cfg, categories=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 30, 3), dtype=np.uint8) for _ in range(3)]
    both = Embedder(net, ["a", "b"], views=(1.0, 0.5)).predict(images)
    whole = Embedder(net, ["a", "b"]).predict(images)
    zoom = Embedder(net, ["a", "b"]).predict([centre_crop(i, 0.5) for i in images])
    mean = whole.embeddings + zoom.embeddings
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(both.embeddings, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        both.category_probs, (whole.category_probs + zoom.category_probs) / 2, rtol=1e-5
    )
    np.testing.assert_allclose(both.boxes, whole.boxes, rtol=1e-6)
    assert centre_crop(images[0], 0.5).shape == (20, 15, 3)
    with pytest.raises(ValueError, match="2 views"):
        Embedder(net, views=(1.0, 0.5)).predict_maps(np.zeros((1, 3, 32, 4, 4), np.float32))


def test_an_onnx_backbone_cut_trains_its_tail_with_the_heads() -> None:
    from conftest import make_tiny_onnx

    from vsearch.models.losses import make_label_loss

    data = make_tiny_onnx(with_tail=True)
    frozen_cfg = ModelConfig(arch="xception_onnx", embed_dim=16, head_hidden=32)
    cut_cfg = frozen_cfg.model_copy(update={"backbone_cut": "cut"})
    torch.manual_seed(0)
    frozen = build_network(frozen_cfg, 2, backbone_bytes=data).eval()
    cut = build_network(cut_cfg, 2, backbone_bytes=data).eval()
    cut.head.load_state_dict(frozen.head.state_dict())
    # The frozen part stops at the cut (what the feature cache stores); with the pretrained tail
    # the network computes what the whole frozen graph does.
    assert (cut.map_spec.channels, cut.map_spec.grid) == (64, 7)
    assert cut.map_spec.name == "xception_onnx@cut"
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert cut.feature_maps(x).shape == (3, 64, 7, 7)
        torch.testing.assert_close(cut(x).embedding, frozen(x).embedding, rtol=1e-4, atol=1e-5)
    # The metric loss reaches the tail's weights, which train with the heads.
    part = cut.trainable_part.train()
    names = [n for n, _ in part.named_parameters()]
    assert any(n.startswith("tail.") for n in names) and any(n.startswith("head.") for n in names)
    with torch.no_grad():
        maps = cut.feature_maps(x)
    loss = make_label_loss("supcon", 0.2, 0.1)(part(maps).embedding, torch.tensor([0, 0, 1]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cut.tail.parameters())
    # The artifact keeps the trained tail; rebuilding it needs (and checks) the backbone's bytes.
    art = ModelArtifact.from_network(cut, cut_cfg, ["a", "b"], [], sha256_hex(data))
    assert any(k.startswith("tail.") for k in art.state_dict)
    rebuilt = ModelArtifact.from_bytes(art.to_bytes()).build(data)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).embedding, cut.eval()(x).embedding)
    with pytest.raises(ValueError, match="pass its bytes"):
        art.build(heads_only=True)
    with pytest.raises(ValueError, match="applies to ONNX backbones"):
        build_network(ModelConfig(arch="cnn_tiny", backbone_cut="cut"), 2)
