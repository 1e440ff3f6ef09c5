"""Backbones behind one contract, the heads on their feature maps, losses and the model artifact.

Backbones are created by name from the registry (``vsearch.models.registry``).
"""

from vsearch.models.embedder import Embedder, Prediction
from vsearch.models.encoder import EncoderSpec
from vsearch.models.registry import available_backbones, backbone_spec, create_backbone

__all__ = [
    "Embedder",
    "EncoderSpec",
    "Prediction",
    "available_backbones",
    "backbone_spec",
    "create_backbone",
]
