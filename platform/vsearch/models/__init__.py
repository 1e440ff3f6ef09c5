"""Networks, losses and the model artifact. Architectures are created by name from the registry."""

from vsearch.models.embedder import Embedder
from vsearch.models.registry import available_models, create_model, register_model

__all__ = ["Embedder", "available_models", "create_model", "register_model"]
