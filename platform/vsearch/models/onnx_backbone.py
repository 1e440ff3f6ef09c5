"""A frozen backbone exported to ONNX, run by onnxruntime (no gradients flow through it).

The model's bytes come from the caller (storage reads them; nothing here touches files). Its input
must be ``(batch, 3, s, s)`` with a fixed ``s`` and its first output a ``(batch, C, g, g)`` map;
both are read from the graph and checked against the spec.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import torch

from vsearch.models.encoder import MINUS_ONE_ONE_MEAN, MINUS_ONE_ONE_STD, EncoderSpec


class OnnxBackbone:
    """``(n, 3, s, s) float32`` -> ``(n, C, g, g) float32`` through an ONNX graph, on CPU.

    ``threads`` caps onnxruntime's intra-op threads (1 in Ray workers sharing a node).
    """

    def __init__(
        self, spec: EncoderSpec, model_bytes: bytes, threads: int = 1, cut: str | None = None
    ) -> None:
        """``cut`` names a graph tensor: the graph then stops there (the frozen part of a backbone
        whose end trains, ``vsearch.models.onnx_torch``) and ``spec`` describes that tensor's
        map, under the name ``<name>@<cut>``."""
        import onnxruntime as ort

        if cut is not None:
            from vsearch.models.onnx_torch import truncate

            model_bytes = truncate(model_bytes, cut)

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # CUDA where onnxruntime has it (the onnxruntime-gpu package) and this process sees a
        # GPU (a Ray actor given num_gpus does; one given none sees none), else the CPU.
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{spec.name}: not a loadable ONNX model: {exc}") from exc
        if self.session.get_providers()[0] == "CUDAExecutionProvider":
            self.max_batch = self.max_batch_gpu
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if (
            len(shape) != 4
            or shape[1] != 3
            or shape[2] != shape[3]
            or not isinstance(shape[2], int)
        ):
            raise ValueError(
                f"{spec.name}: ONNX input {self.input_name!r} has shape {shape}; "
                "expected (batch, 3, s, s) with a fixed s"
            )
        out_shape = outputs[0].shape
        if len(out_shape) != 4:
            raise ValueError(f"{spec.name}: ONNX output has shape {out_shape}; expected 4 dims")
        if cut is not None:
            channels, rows, cols = out_shape[1:]
            if not all(isinstance(d, int) for d in (channels, rows, cols)) or rows != cols:
                raise ValueError(
                    f"{spec.name}: the tensor {cut!r} has shape {out_shape}; a cut must be a "
                    "square map, (batch, C, g, g) or (batch, g, g, C)"
                )
            spec = replace(spec, name=f"{spec.name}@{cut}", channels=channels, grid=rows)
        self.spec = spec
        if shape[2] != spec.input_size or (
            isinstance(out_shape[1], int) and out_shape[1] != spec.channels
        ):
            raise ValueError(
                f"{spec.name}: the ONNX graph takes {shape} and gives {out_shape}, but the spec "
                f"says input {spec.input_size} px and {spec.channels} channels"
            )

    #: Images per onnxruntime call on CPU. One at a time is the fastest here: the activations
    #: of one image stay in the CPU's caches (Xception at 224 px, one thread: 17-18 images/s
    #: at 1, 15-16 at 8, 12-13 at 32; two processes side by side 36 against 27-29 at 8), and
    #: the memory arena stays small (it grows with the batch: a process peaks at about 0.6 GiB
    #: at 1, 0.9 GiB at 8).
    max_batch = 1
    #: On a GPU (CUDA provider) a call is worth batching.
    max_batch_gpu = 32

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float32)
        parts = [
            self.session.run(None, {self.input_name: array[i : i + self.max_batch]})[0]
            for i in range(0, len(array), self.max_batch)
        ]
        if not parts:
            return torch.empty(0, self.spec.channels, self.spec.grid, self.spec.grid)
        return torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))


def backbone_id(name: str, model_bytes: bytes, cut: str | None = None) -> str:
    """A short identity of a frozen backbone (or of its part up to tensor ``cut``): its name,
    the cut, and the sha256 prefix of its bytes. Feature caches are keyed by it."""
    part = f"@{cut}" if cut else ""
    return f"{name}{part}-{hashlib.sha256(model_bytes).hexdigest()[:12]}"


def xception_spec(input_size: int = 224, **_: object) -> EncoderSpec:
    """The Xception ImageNet feature-map export (``shared/models/xception_imagenet_fmap.onnx``):
    224 px, [-1, 1] scaling, ``(2048, 7, 7)`` map."""
    return EncoderSpec(
        name="xception_onnx",
        backend="onnx",
        input_size=224,
        mean=MINUS_ONE_ONE_MEAN,
        std=MINUS_ONE_ONE_STD,
        channels=2048,
        grid=7,
        trainable=False,
    )
