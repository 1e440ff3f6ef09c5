"""``SearchNetwork``: a backbone (trainable torch, or frozen ONNX) plus the ``SearchHead``."""

from __future__ import annotations

import torch
from torch import nn

from vsearch.models.encoder import EncoderSpec
from vsearch.models.heads import NetOutput, SearchHead


class _OnMaps(nn.Module):
    """What trains on cached maps of a frozen backbone: its trainable tail (if any), then the
    heads. It shares their parameters with the ``SearchNetwork`` that made it."""

    def __init__(self, tail: nn.Module | None, head: SearchHead) -> None:
        super().__init__()
        self.tail = tail
        self.head = head

    def forward(self, fmap: torch.Tensor) -> NetOutput:
        fmap = fmap.float()
        return self.head(self.tail(fmap) if self.tail is not None else fmap)


class SearchNetwork(nn.Module):
    """Images ``(n, 3, s, s)`` (preprocessed per ``spec``) -> ``NetOutput`` in one forward pass.

    A trainable backbone is a submodule (its weights are in ``state_dict``); a frozen one (ONNX) is
    held beside the module, so training runs on its cached feature maps (``forward_maps``) and
    ``state_dict`` has the heads, plus the ``tail``: the end of the ONNX backbone that trains with
    them when the frozen part stops at a cut (``model.backbone_cut``).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        head: SearchHead,
        backbone: object,
        tail: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.head = head
        self.tail = tail
        if spec.trainable:
            if not isinstance(backbone, nn.Module):
                raise TypeError(f"{spec.name}: a trainable backbone must be an nn.Module")
            if tail is not None:
                raise ValueError(f"{spec.name}: a trainable backbone has no separate tail")
            self.backbone: nn.Module | None = backbone
            self._frozen = None
        else:
            self.backbone = None
            self._frozen = backbone
        # Not a registered submodule: its parameters are already this module's.
        self.__dict__["_on_maps"] = _OnMaps(tail, head)

    @property
    def embed_dim(self) -> int:
        return self.head.embed_dim

    @property
    def map_spec(self) -> EncoderSpec:
        """What ``feature_maps`` returns (and the feature cache holds): the backbone's map, or the
        map at the cut of a backbone whose tail trains."""
        frozen_spec = getattr(self._frozen, "spec", None)
        return frozen_spec if frozen_spec is not None else self.spec

    @property
    def trainable_part(self) -> nn.Module:
        """What an optimiser updates: the whole network, or (frozen backbone) the module that runs
        on its cached maps: the trainable tail, if any, and the heads."""
        return self if self.spec.trainable else self._on_maps

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, g, g) float32`` backbone output (at the cut, for a backbone with a tail)."""
        if self.backbone is not None:
            return self.backbone(x)
        if self._frozen is None:
            raise RuntimeError(f"{self.spec.name}: no backbone attached (heads only)")
        with torch.no_grad():
            return self._frozen(x)

    def forward_maps(self, fmap: torch.Tensor) -> NetOutput:
        return self._on_maps(fmap)

    def forward(self, x: torch.Tensor) -> NetOutput:
        return self.forward_maps(self.feature_maps(x))
