"""Create embedding networks by name. Every architecture family has a tiny variant for tests."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``fn(embed_dim=...) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def create_model(name: str, embed_dim: int) -> nn.Module:
    """Build the registered architecture ``name`` producing ``embed_dim``-d L2-normalised embeddings."""
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {sorted(_REGISTRY)}") from None
    return factory(embed_dim=embed_dim)


def _load_builtin() -> None:
    # Importing the module runs its @register_model decorators.
    from vsearch.models import backbone  # noqa: F401
