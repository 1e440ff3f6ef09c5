"""The versioned model artifact: architecture, weights and training facts, as bytes.

Storage writes the bytes; nothing here touches files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vsearch.config import ModelConfig
from vsearch.models.registry import create_model


@dataclass
class ModelArtifact:
    """A trained (or initial) embedder: ``config`` rebuilds the network, ``state_dict`` fills it."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    #: Facts about how it was made (epochs, losses, dataset, time): JSON-friendly values only.
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(
        cls, model: nn.Module, config: ModelConfig, info: dict[str, Any] | None = None
    ) -> ModelArtifact:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(config=config, state_dict=state, info=dict(info or {}))

    def build(self) -> nn.Module:
        """A fresh network with these weights, in eval mode."""
        model = create_model(self.config.arch, self.config.embed_dim)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        payload = {
            "format": 1,
            "config": self.config.model_dump(),
            "state_dict": self.state_dict,
            "info": self.info,
        }
        torch.save(payload, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelArtifact:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if payload.get("format") != 1:
            raise ValueError(f"unsupported model artifact format {payload.get('format')!r}")
        return cls(
            config=ModelConfig.model_validate(payload["config"]),
            state_dict=payload["state_dict"],
            info=payload["info"],
        )


def initial_artifact(config: ModelConfig) -> ModelArtifact:
    """The untrained network for ``config``, seeded by ``config.seed`` (the baseline of reports)."""
    torch.manual_seed(config.seed)
    return ModelArtifact.from_model(create_model(config.arch, config.embed_dim), config, {})
