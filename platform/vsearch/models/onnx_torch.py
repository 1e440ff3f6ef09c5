"""Run an ONNX convolutional graph as a torch module, so that its weights can train.

onnxruntime (``vsearch.models.onnx_backbone``) runs an exported backbone fast but frozen. This
module reads the same bytes with the ``onnx`` package and executes the graph node by node with
torch operators; every floating-point initializer becomes an ``nn.Parameter``. That gives
gradients (fine-tuning the last blocks of a pretrained backbone), any input side the convolutions
allow (the export fixes 224 px, the operators do not), and CUDA where torch has it.

The graph can be cut at a named tensor: ``split(model, cut)`` returns the part up to that tensor
and the part after it, so the first part can run once per image into a cache and the second train
on the cached activations. The map at the cut is always handed over channels first,
``(n, C, g, g)``: a cut at a channels-last tensor (Keras exports keep the residual sums of
Xception's blocks as ``(n, g, g, C)``) is transposed on the way out of the first part and back on
the way into the second.

Only the operators convolutional backbones exported from Keras/torch use are implemented
(convolutions, pooling, element-wise arithmetic, layout changes); any other is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _pairs(pads: Sequence[int]) -> tuple[int, ...]:
    """ONNX pads ``(b1, b2, ..., e1, e2, ...)`` -> torch's ``(e_last, b_last, ...)`` order."""
    half = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(half)):
        out += [int(pads[axis]), int(pads[axis + half])]
    return tuple(out)


def _padding(x: torch.Tensor, pads: Sequence[int], value: float) -> tuple[torch.Tensor, Any]:
    """ONNX ``pads`` as the operator's own symmetric ``padding``, or (when the two sides
    differ) applied to ``x`` first with ``value`` and padding 0."""
    half = len(pads) // 2
    if list(pads[:half]) != list(pads[half:]):
        return F.pad(x, _pairs(pads), value=value), 0
    return x, tuple(int(p) for p in pads[:half])


def _conv(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError("Conv with auto_pad is not supported; export with explicit pads")
    x, padding = _padding(x, attrs.get("pads", [0] * (2 * (w.dim() - 2))), 0.0)
    return F.conv2d(
        x,
        w,
        bias,
        stride=tuple(attrs.get("strides", [1, 1])),
        padding=padding,
        dilation=tuple(attrs.get("dilations", [1, 1])),
        groups=int(attrs.get("group", 1)),
    )


def _max_pool(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, padding = _padding(inputs[0], attrs.get("pads", [0, 0, 0, 0]), float("-inf"))
    return F.max_pool2d(
        x,
        kernel_size=tuple(attrs["kernel_shape"]),
        stride=tuple(attrs.get("strides", [1, 1])),
        padding=padding,
        dilation=tuple(attrs.get("dilations", [1, 1])),
        ceil_mode=bool(attrs.get("ceil_mode", 0)),
    )


def _pad(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x = inputs[0]
    pads = [int(p) for p in inputs[1].tolist()] if len(inputs) > 1 else list(attrs["pads"])
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = float(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else 0.0
    torch_mode = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}[mode]
    # torch pads only the trailing dims in non-constant modes: drop the leading zero pads.
    half = len(pads) // 2
    lead = 0
    while lead < half - 2 and pads[lead] == 0 and pads[lead + half] == 0:
        lead += 1
    begins, ends = pads[lead:half], pads[half + lead :]
    pairs = _pairs(begins + ends)
    if torch_mode == "constant":
        return F.pad(x, pairs, value=value)
    return F.pad(x, pairs, mode=torch_mode)


def _reshape(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, shape = inputs[0], [int(s) for s in inputs[1].tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _gemm(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    a, b = inputs[0], inputs[1]
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(inputs) > 2:
        out = out + attrs.get("beta", 1.0) * inputs[2]
    return out


def _batch_norm(inputs: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, scale, bias, mean, var = inputs[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, attrs.get("epsilon", 1e-5))


#: ONNX operator -> torch implementation ``(inputs, attributes) -> tensor``.
OPS: dict[str, Callable[[list[Any], dict[str, Any]], torch.Tensor]] = {
    "Conv": _conv,
    "MaxPool": _max_pool,
    "AveragePool": lambda i, a: F.avg_pool2d(
        i[0], tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))
    ),
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=(2, 3), keepdim=True),
    "Pad": _pad,
    "Transpose": lambda i, a: i[0].permute(*a["perm"]),
    "Reshape": _reshape,
    "Flatten": lambda i, a: i[0].flatten(int(a.get("axis", 1))),
    "Add": lambda i, a: i[0] + i[1],
    "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Div": lambda i, a: i[0] / i[1],
    "Relu": lambda i, a: F.relu(i[0]),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "Clip": lambda i, a: i[0].clamp(
        float(i[1]) if len(i) > 1 and i[1] is not None else None,
        float(i[2]) if len(i) > 2 and i[2] is not None else None,
    ),
    "Identity": lambda i, a: i[0],
    "Concat": lambda i, a: torch.cat(list(i), dim=int(a["axis"])),
    "MatMul": lambda i, a: i[0] @ i[1],
    "Gemm": _gemm,
    "BatchNormalization": _batch_norm,
}


class _Node:
    __slots__ = ("attrs", "inputs", "name", "op", "outputs")

    def __init__(self, op: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any]):
        self.op, self.inputs, self.outputs, self.attrs = op, inputs, outputs, attrs
        self.name = outputs[0] if outputs else op


class OnnxModule(nn.Module):
    """Executes a list of ONNX nodes with torch. ``inputs`` names the graph tensors fed in (in
    ``forward``'s argument order), ``output`` the tensor returned. Floating initializers are
    parameters (``requires_grad`` as given); integer ones (shapes, pads) are constants."""

    def __init__(
        self,
        nodes: list[_Node],
        initializers: dict[str, np.ndarray],
        inputs: list[str],
        output: str,
        trainable: bool = True,
        input_perm: tuple[int, ...] | None = None,
        output_perm: tuple[int, ...] | None = None,
    ) -> None:
        """``input_perm`` / ``output_perm`` permute the first input's axes before the graph
        reads it and the output's axes after it (a channels-last cut handed over channels
        first)."""
        super().__init__()
        self.input_perm, self.output_perm = input_perm, output_perm
        self.nodes = nodes
        self.input_names = list(inputs)
        self.output_name = output
        self.weights = nn.ParameterDict()
        self._key: dict[str, str] = {}
        self.constants: dict[str, torch.Tensor] = {}
        used = {name for node in nodes for name in node.inputs}
        for name, array in initializers.items():
            if name not in used:
                continue
            tensor = torch.from_numpy(np.array(array))
            if tensor.is_floating_point():
                key = f"w{len(self._key)}"
                self._key[name] = key
                self.weights[key] = nn.Parameter(tensor.float(), requires_grad=trainable)
            else:
                self.constants[name] = tensor
        # A node whose inputs are all initializers (a weight's reshape/transpose) is evaluated
        # at every call, so its result follows the trained weights.

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if len(args) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} inputs, got {len(args)}")
        if self.input_perm is not None:
            args = (args[0].permute(*self.input_perm), *args[1:])
        values: dict[str, Any] = dict(zip(self.input_names, args, strict=True))
        for name, key in self._key.items():
            values[name] = self.weights[key]
        values.update(self.constants)
        for node in self.nodes:
            ins = [values[name] if name else None for name in node.inputs]
            values[node.outputs[0]] = OPS[node.op](ins, node.attrs)
        out = values[self.output_name]
        return out if self.output_perm is None else out.permute(*self.output_perm)


def _parse(model_bytes: bytes) -> tuple[list[_Node], dict[str, np.ndarray], str, str]:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ValueError(f"not a loadable ONNX model: {exc}") from exc
    graph = model.graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes: list[_Node] = []
    unsupported = set()
    for n in graph.node:
        if n.op_type == "Constant":
            initializers[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            continue
        if n.op_type not in OPS:
            unsupported.add(n.op_type)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        nodes.append(_Node(n.op_type, list(n.input), list(n.output), attrs))
    if unsupported:
        raise ValueError(f"ONNX operators not supported in torch: {sorted(unsupported)}")
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(graph_inputs) != 1:
        raise ValueError(f"expected one graph input, found {graph_inputs}")
    return nodes, initializers, graph_inputs[0], graph.output[0].name


def to_torch(model_bytes: bytes, trainable: bool = True) -> OnnxModule:
    """The whole ONNX graph as one torch module: ``module(x)`` gives its first output."""
    nodes, inits, source, output = _parse(model_bytes)
    return OnnxModule(nodes, inits, [source], output, trainable)


def _ancestors(nodes: list[_Node], target: str, stop: set[str]) -> set[int]:
    """Indices of the nodes ``target`` depends on, not looking past tensors in ``stop``."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.outputs}
    needed: set[int] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in stop or name not in producer:
            continue
        index = producer[name]
        if index in needed:
            continue
        needed.add(index)
        todo.extend(nodes[index].inputs)
    return needed


_TO_CHANNELS_FIRST = (0, 3, 1, 2)
_TO_CHANNELS_LAST = (0, 2, 3, 1)


def _dims(inferred: Any, name: str) -> list[int | None]:
    """The shape of tensor ``name`` in a shape-inferred ONNX model (``None`` per unknown
    dimension; empty when inference gave none)."""
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return []


def _is_channels_last(dims: list[int | None]) -> bool:
    """``(n, g, g, C)``: the two middle sides equal and different from the last. A map whose
    three sides are all equal reads as channels first."""
    return len(dims) == 4 and None not in dims[1:] and dims[1] == dims[2] != dims[3]


def channels_last(model_bytes: bytes, cut: str) -> bool:
    """Whether tensor ``cut`` of the graph is a channels-last map ``(n, g, g, C)``."""
    import onnx

    model = onnx.load_model_from_string(model_bytes)
    return _is_channels_last(_dims(onnx.shape_inference.infer_shapes(model), cut))


def split(
    model_bytes: bytes, cut: str, trainable_tail: bool = True
) -> tuple[OnnxModule, OnnxModule]:
    """Cut the graph at tensor ``cut``: ``(head, tail)`` with ``tail(head(x)) == full(x)``.

    Every path from the input to the output must pass through ``cut`` (a residual branch that
    skips it is refused). The head's weights are frozen; the tail's train if ``trainable_tail``.
    The head returns the map at the cut channels first, and the tail takes it so
    (``channels_last``).
    """
    nodes, inits, source, output = _parse(model_bytes)
    if not any(cut in n.outputs for n in nodes):
        raise ValueError(f"no tensor named {cut!r} in the graph")
    last = channels_last(model_bytes, cut)
    head_idx = _ancestors(nodes, cut, stop=set())
    tail_idx = _ancestors(nodes, output, stop={cut})
    # The tail may read the cut, initializers and its own tensors; anything else the head computes
    # (or the graph input itself) would be a path around the cut.
    head_only = {out for j in head_idx - tail_idx for out in nodes[j].outputs} - {cut}
    for i in tail_idx:
        if source in nodes[i].inputs or head_only & set(nodes[i].inputs):
            raise ValueError(f"cutting at {cut!r} leaves a branch that skips it")
    head = OnnxModule(
        [nodes[i] for i in sorted(head_idx)],
        inits,
        [source],
        cut,
        trainable=False,
        output_perm=_TO_CHANNELS_FIRST if last else None,
    )
    tail = OnnxModule(
        [nodes[i] for i in sorted(tail_idx)],
        inits,
        [cut],
        output,
        trainable_tail,
        input_perm=_TO_CHANNELS_LAST if last else None,
    )
    return head, tail


def tensor_names(model_bytes: bytes, op: str | None = None) -> list[str]:
    """Names of the tensors the graph's nodes produce (of operator ``op`` if given), in order;
    candidates for ``split``'s cut."""
    nodes, _, _, _ = _parse(model_bytes)
    return [n.outputs[0] for n in nodes if op is None or n.op == op]


def truncate(model_bytes: bytes, cut: str) -> bytes:
    """The ONNX graph up to tensor ``cut`` (which becomes its only output), as bytes for
    onnxruntime: the frozen part of a split backbone then runs at onnxruntime's speed. A
    channels-last cut gets a final transpose, so the output is channels first like ``split``'s
    head."""
    import onnx
    from onnx import TensorProto, helper
    from onnx.utils import Extractor

    model = onnx.load_model_from_string(model_bytes)
    if not any(cut in n.output for n in model.graph.node):
        raise ValueError(f"no tensor named {cut!r} in the graph")
    source = [
        i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    inferred = onnx.shape_inference.infer_shapes(model)
    part = Extractor(inferred).extract_model(source, [cut])
    dims = _dims(inferred, cut)
    if _is_channels_last(dims):
        _, rows, cols, channels = dims
        out = f"{cut}__channels_first"
        part.graph.node.append(
            helper.make_node("Transpose", [cut], [out], perm=list(_TO_CHANNELS_FIRST))
        )
        del part.graph.output[:]
        part.graph.output.append(
            helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", channels, rows, cols])
        )
    return part.SerializeToString()


def pretrained_tail(model_bytes: bytes, cut: str) -> Callable[..., np.ndarray]:
    """The graph after ``cut`` with its pretrained (untrained-here) weights, as a function of
    ``(n, C, g, g)`` maps at the cut: what the frozen backbone would have output. Baselines such
    as "pooled frozen backbone" use it on cached cut maps. The function takes an optional
    ``progress(m)``, called as each batch of ``m`` maps has run."""
    _, tail = split(model_bytes, cut, trainable_tail=False)
    tail.eval()

    @torch.no_grad()
    def run(maps: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        parts = []
        for i in range(0, len(maps), 64):
            chunk = np.asarray(maps[i : i + 64], dtype=np.float32)
            parts.append(tail(torch.from_numpy(chunk)).numpy())
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(parts) if parts else np.asarray(maps, dtype=np.float32)

    return run
