"""Create backbones by name. The registry maps names to ``module:function`` strings and imports a
model module only when that name is asked for, so no model module is imported by the registry and
none imports it back. Every trainable family has a tiny variant for tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from vsearch.models.encoder import EncoderSpec

#: name -> (backend, "module:factory"). A torch factory returns the module (with ``.spec``);
#: an onnx factory returns the ``EncoderSpec`` (the bytes come from storage at build time).
_BUILTIN: dict[str, tuple[str, str]] = {
    "cnn_tiny": ("torch", "vsearch.models.backbones:cnn_tiny"),
    "cnn_small": ("torch", "vsearch.models.backbones:cnn_small"),
    "xception_onnx": ("onnx", "vsearch.models.onnx_backbone:xception_spec"),
}
_EXTRA: dict[str, tuple[str, Callable[..., Any]]] = {}


def register_backbone(name: str, backend: str, factory: Callable[..., Any]) -> None:
    """Add a backbone: ``factory(input_size=...)`` returns a torch module with ``.spec`` (backend
    "torch") or an ``EncoderSpec`` (backend "onnx")."""
    if name in _BUILTIN or name in _EXTRA:
        raise ValueError(f"backbone {name!r} is already registered")
    if backend not in ("torch", "onnx"):
        raise ValueError(f"backend must be 'torch' or 'onnx', not {backend!r}")
    _EXTRA[name] = (backend, factory)


def available_backbones() -> list[str]:
    """Names accepted by ``create_backbone`` and ``backbone_spec``, sorted."""
    return sorted({*_BUILTIN, *_EXTRA})


def _factory(name: str) -> tuple[str, Callable[..., Any]]:
    if name in _EXTRA:
        return _EXTRA[name]
    try:
        backend, target = _BUILTIN[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; available: {available_backbones()}") from None
    module, attr = target.split(":")
    return backend, getattr(importlib.import_module(module), attr)


def backend_of(name: str) -> str:
    """ "torch" (trainable, built here) or "onnx" (frozen, needs the model's bytes)."""
    return _factory(name)[0]


def backbone_spec(name: str, input_size: int) -> EncoderSpec:
    """The ``EncoderSpec`` of backbone ``name`` at ``input_size`` (fixed for ONNX graphs)."""
    backend, factory = _factory(name)
    built = factory(input_size=input_size)
    return built if backend == "onnx" else built.spec


def create_backbone(
    name: str, input_size: int, model_bytes: bytes | None = None, cut: str | None = None
) -> Any:
    """Build backbone ``name``: a trainable ``nn.Module`` (torch) or a frozen ``OnnxBackbone``
    from ``model_bytes`` (onnx; up to tensor ``cut`` when given). Both have ``.spec`` and map
    images to feature maps."""
    backend, factory = _factory(name)
    if backend == "torch":
        module: nn.Module = factory(input_size=input_size)
        return module
    if model_bytes is None:
        raise ValueError(f"backbone {name!r} is an ONNX graph: its model bytes are needed")
    from vsearch.models.onnx_backbone import OnnxBackbone

    return OnnxBackbone(factory(input_size=input_size), model_bytes, cut=cut)
