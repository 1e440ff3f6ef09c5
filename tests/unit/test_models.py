from __future__ import annotations

import pytest
import torch

from vsearch.config import ModelConfig
from vsearch.models import available_models, create_model
from vsearch.models.artifact import ModelArtifact, initial_artifact


def test_registry_lists_and_rejects() -> None:
    assert {"cnn_tiny", "cnn_small"} <= set(available_models())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope", 16)


@pytest.mark.parametrize("name", ["cnn_tiny", "cnn_small"])
def test_embeddings_are_normalised(name: str) -> None:
    model = create_model(name, 24).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_artifact_round_trip_gives_identical_outputs() -> None:
    cfg = ModelConfig(arch="cnn_tiny", embed_dim=16, input_size=32, seed=3)
    art = initial_artifact(cfg)
    art.info["epochs_done"] = 0
    again = ModelArtifact.from_bytes(art.to_bytes())
    assert again.config == cfg and again.info == {"epochs_done": 0}
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(art.build()(x), again.build()(x))


def test_initial_artifact_is_seeded() -> None:
    cfg = ModelConfig(arch="cnn_tiny", embed_dim=16, seed=5)
    a, b = initial_artifact(cfg), initial_artifact(cfg)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_artifact_rejects_unknown_format() -> None:
    import io

    buf = io.BytesIO()
    torch.save({"format": 99}, buf)
    with pytest.raises(ValueError, match="format 99"):
        ModelArtifact.from_bytes(buf.getvalue())
