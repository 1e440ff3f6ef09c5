"""The versioned model artifact (format 2): backbone, preprocessing, heads, categories, weights and
the facts of its training, as bytes.

Storage writes the bytes; nothing here touches files. A frozen ONNX backbone's bytes travel
separately (they are large and shared by many versions): the artifact records their sha256, and
``build`` refuses bytes that do not match.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import torch

from vsearch.config import ModelConfig
from vsearch.models.embedder import Embedder
from vsearch.models.encoder import EncoderSpec
from vsearch.models.heads import SearchHead
from vsearch.models.network import SearchNetwork
from vsearch.models.registry import backbone_spec, backend_of, create_backbone

FORMAT = 2


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_network(
    config: ModelConfig,
    categories: int,
    products: int = 0,
    backbone_bytes: bytes | None = None,
    attach_backbone: bool = True,
) -> SearchNetwork:
    """A freshly initialised ``SearchNetwork`` for ``config`` with a ``categories``-way head and
    ``products`` proxies (0: none).

    An ONNX backbone's frozen part is attached when its ``backbone_bytes`` are given and
    ``attach_backbone`` (else the network runs on cached maps only). With ``config.backbone_cut``
    the bytes are always needed: the trainable tail starts from their weights.
    """
    onnx = backend_of(config.arch) == "onnx"
    if config.backbone_cut and not onnx:
        raise ValueError(f"model.backbone_cut applies to ONNX backbones, not {config.arch!r}")
    tail = None
    if onnx and config.backbone_cut:
        if backbone_bytes is None:
            raise ValueError(
                f"{config.arch} trains after tensor {config.backbone_cut!r}: its bytes are needed"
            )
        from vsearch.models.onnx_torch import split

        _, tail = split(backbone_bytes, config.backbone_cut)
    backbone = None
    if not onnx:
        backbone = create_backbone(config.arch, config.input_size)
    elif backbone_bytes is not None and attach_backbone:
        backbone = create_backbone(
            config.arch, config.input_size, backbone_bytes, cut=config.backbone_cut
        )
    spec = backbone.spec if not onnx else backbone_spec(config.arch, config.input_size)
    head = SearchHead(
        spec.channels,
        config.embed_dim,
        categories,
        localise=config.localise,
        localiser=config.localiser,
        steepness=config.mask_steepness,
        hidden=config.head_hidden,
        dropout=config.dropout,
        products=products,
    )
    return SearchNetwork(spec, head, backbone, tail)


@dataclass
class ModelArtifact:
    """A trained (or initial) search network.

    ``config`` rebuilds it, ``categories`` names the category head's outputs, ``products`` the
    training products of its proxies (empty: no proxies), ``state_dict`` fills
    it (the heads only when the backbone is frozen), ``backbone_sha256`` identifies the frozen
    backbone's bytes (None for torch backbones). ``info`` holds JSON-friendly facts: training
    config, data fingerprint, metrics, time.
    """

    config: ModelConfig
    categories: list[str]
    products: list[str]
    state_dict: dict[str, torch.Tensor]
    backbone_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> EncoderSpec:
        return backbone_spec(self.config.arch, self.config.input_size)

    @property
    def needs_backbone_bytes(self) -> bool:
        return self.backbone_sha256 is not None

    @classmethod
    def from_network(
        cls,
        network: SearchNetwork,
        config: ModelConfig,
        categories: list[str],
        products: list[str],
        backbone_sha256: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> ModelArtifact:
        state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        return cls(
            config, list(categories), list(products), state, backbone_sha256, dict(info or {})
        )

    def build(self, backbone_bytes: bytes | None = None, heads_only: bool = False) -> SearchNetwork:
        """The network with these weights, in eval mode.

        A frozen backbone needs its ``backbone_bytes`` (checked against ``backbone_sha256``)
        unless ``heads_only``, which gives a network that runs on feature maps alone (a backbone
        with a trainable tail needs them even then: the tail is built from the graph).
        """
        bytes_needed = not heads_only or bool(self.config.backbone_cut)
        if self.needs_backbone_bytes and (bytes_needed or backbone_bytes is not None):
            if backbone_bytes is None:
                raise ValueError(f"model uses the ONNX backbone {self.config.arch}: pass its bytes")
            digest = sha256_hex(backbone_bytes)
            if digest != self.backbone_sha256:
                raise ValueError(
                    f"backbone bytes have sha256 {digest[:12]}..., the model was trained on "
                    f"{self.backbone_sha256[:12]}...: refusing a different backbone"
                )
        network = build_network(
            self.config,
            len(self.categories),
            len(self.products),
            backbone_bytes,
            attach_backbone=not heads_only,
        )
        network.load_state_dict(self.state_dict)
        return network.eval()

    def embedder(
        self, backbone_bytes: bytes | None = None, batch_size: int = 32, device: str = "auto"
    ) -> Embedder:
        """An ``Embedder`` over ``build(backbone_bytes)`` on ``device`` ("auto": CUDA when this
        process sees a GPU, as a Ray actor given ``num_gpus`` does, else the CPU)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        network = self.build(backbone_bytes)
        return Embedder(
            network,
            self.categories,
            batch_size,
            self.config.views,
            device,
            box_margin=self.config.box_margin if self.config.box_view else None,
            refine_box=self.config.refine_box,
        )

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        payload = {
            "format": FORMAT,
            "config": self.config.model_dump(),
            "spec": self.spec.as_dict(),
            "categories": self.categories,
            "products": self.products,
            "backbone_sha256": self.backbone_sha256,
            "state_dict": self.state_dict,
            "info": self.info,
        }
        torch.save(payload, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelArtifact:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT:
            raise ValueError(
                f"unsupported model artifact format {payload.get('format')!r} (this version "
                f"reads format {FORMAT}; retrain with `vsearch train`)"
            )
        config = dict(payload["config"])
        # Versions saved before the spatial localiser existed used the pooled one.
        config.setdefault("localiser", "pooled")
        return cls(
            config=ModelConfig.model_validate(config),
            categories=list(payload["categories"]),
            products=list(payload["products"]),
            state_dict=payload["state_dict"],
            backbone_sha256=payload["backbone_sha256"],
            info=payload["info"],
        )


def initial_artifact(
    config: ModelConfig,
    categories: list[str],
    products: list[str] | None = None,
    backbone_bytes: bytes | None = None,
) -> ModelArtifact:
    """The untrained network for ``config``, seeded by ``config.seed`` (the baseline of reports).

    With a frozen backbone its heads are random too; report rows for "frozen backbone, no
    training" use pooled feature maps instead (``vsearch.eval``).
    """
    torch.manual_seed(config.seed)
    products = list(products or [])
    network = build_network(
        config, len(categories), len(products), backbone_bytes, attach_backbone=False
    )
    digest = sha256_hex(backbone_bytes) if backbone_bytes is not None else None
    if backend_of(config.arch) == "onnx" and digest is None:
        raise ValueError(f"{config.arch} is an ONNX backbone: its bytes are needed")
    return ModelArtifact.from_network(network, config, categories, products, digest)
