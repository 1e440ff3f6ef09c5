"""``SearchNetwork``: a backbone (trainable torch, or frozen ONNX) plus the ``SearchHead``."""

from __future__ import annotations

import torch
from torch import nn

from vsearch.models.encoder import EncoderSpec
from vsearch.models.heads import NetOutput, SearchHead


class SearchNetwork(nn.Module):
    """Images ``(n, 3, s, s)`` (preprocessed per ``spec``) -> ``NetOutput`` in one forward pass.

    A trainable backbone is a submodule (its weights are in ``state_dict``); a frozen one (ONNX) is
    held beside the module, so ``state_dict`` has the heads only and training runs on its feature
    maps (``forward_maps``).
    """

    def __init__(self, spec: EncoderSpec, head: SearchHead, backbone: object) -> None:
        super().__init__()
        self.spec = spec
        self.head = head
        if spec.trainable:
            if not isinstance(backbone, nn.Module):
                raise TypeError(f"{spec.name}: a trainable backbone must be an nn.Module")
            self.backbone: nn.Module | None = backbone
            self._frozen = None
        else:
            self.backbone = None
            self._frozen = backbone

    @property
    def embed_dim(self) -> int:
        return self.head.embed_dim

    @property
    def trainable_part(self) -> nn.Module:
        """What an optimiser updates: the whole network, or the heads of a frozen backbone."""
        return self if self.spec.trainable else self.head

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, g, g) float32`` backbone output."""
        if self.backbone is not None:
            return self.backbone(x)
        if self._frozen is None:
            raise RuntimeError(f"{self.spec.name}: no backbone attached (heads only)")
        with torch.no_grad():
            return self._frozen(x)

    def forward_maps(self, fmap: torch.Tensor) -> NetOutput:
        return self.head(fmap.float())

    def forward(self, x: torch.Tensor) -> NetOutput:
        return self.head(self.feature_maps(x))
