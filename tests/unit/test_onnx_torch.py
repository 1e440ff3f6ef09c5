"""The ONNX graph executed by torch matches onnxruntime, can be cut, and trains after the cut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vsearch.models.onnx_torch import (  # noqa: E402
    channels_last,
    pretrained_tail,
    split,
    tensor_names,
    to_torch,
    truncate,
)


def _xception_like() -> bytes:
    """The operator pattern of the Keras Xception export in miniature: conv, NHWC transposes,
    batch norm as sub/mul/add, ReLU, a depthwise-separable conv, edge padding + max pool and a
    residual 1x1 conv branch that joins before the cut "joined"."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32) * 0.3, name)

    inits = [
        init("w0", 8, 3, 3, 3),
        init("mean", 1, 1, 1, 8),
        init("scale", 1, 1, 1, 8),
        init("shift", 1, 1, 1, 8),
        init("dw", 8, 1, 3, 3),
        init("pw", 16, 8, 1, 1),
        init("res", 16, 8, 1, 1),
        init("dw2", 3, 3, 16, 1),  # stored HWCM like Keras: reshaped + transposed in the graph
        init("pw2", 12, 16, 1, 1),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([3, 3, 1, 16], np.int64), "dw2_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w0"], ["c0"], strides=[2, 2], pads=[0, 0, 0, 0]),
        helper.make_node("Transpose", ["c0"], ["t0"], perm=[0, 2, 3, 1]),
        helper.make_node("Sub", ["t0", "mean"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["m0"]),
        helper.make_node("Add", ["m0", "shift"], ["a0"]),
        helper.make_node("Relu", ["a0"], ["r0"]),
        helper.make_node("Transpose", ["r0"], ["t1"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t1", "dw"], ["d1"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d1", "pw"], ["p1"]),
        helper.make_node("Pad", ["p1", "pads"], ["padded"], mode="edge"),
        helper.make_node("MaxPool", ["padded"], ["pool"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["t1", "res"], ["r1"], strides=[2, 2]),
        helper.make_node("Add", ["pool", "r1"], ["joined"]),
        helper.make_node("Reshape", ["dw2", "dw2_shape"], ["dw2r"]),
        helper.make_node("Transpose", ["dw2r"], ["dw2t"], perm=[3, 2, 0, 1]),
        helper.make_node("Conv", ["joined", "dw2t"], ["d2"], group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d2", "pw2"], ["p2"]),
        helper.make_node("Relu", ["p2"], ["feature_map"]),
    ]
    graph = helper.make_graph(
        nodes,
        "xception_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def graph() -> bytes:
    return _xception_like()


def _ort(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_torch_execution_matches_onnxruntime(graph: bytes) -> None:
    x = np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ours = to_torch(graph)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _ort(graph, x), rtol=1e-4, atol=1e-4)
    assert ours.shape == (3, 12, 8, 8)


def test_other_input_sizes_run(graph: bytes) -> None:
    # The export fixes 32 px; the operators do not.
    with torch.no_grad():
        out = to_torch(graph)(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 12, 16, 16)


def test_split_composes_to_the_whole_graph_and_only_the_tail_trains(graph: bytes) -> None:
    head, tail = split(graph, "joined")
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        whole = to_torch(graph)(x)
        cut = head(x)
    assert cut.shape == (2, 16, 8, 8)
    torch.testing.assert_close(tail(cut), whole, rtol=1e-5, atol=1e-5)
    assert all(not p.requires_grad for p in head.parameters())
    tail(cut).pow(2).mean().backward()
    grads = [p.grad for p in tail.parameters()]
    assert len(grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_pretrained_tail_completes_cut_maps_in_batches(graph: bytes) -> None:
    x = np.random.default_rng(5).normal(size=(70, 3, 32, 32)).astype(np.float32)
    head, _ = split(graph, "joined")
    with torch.no_grad():
        cut, whole = head(torch.from_numpy(x)).numpy(), to_torch(graph)(torch.from_numpy(x))
    done: list[int] = []
    out = pretrained_tail(graph, "joined")(cut, done.append)
    np.testing.assert_allclose(out, whole.numpy(), rtol=1e-4, atol=1e-4)
    assert done == [64, 6]  # one call per batch of 64 maps


def test_truncated_graph_runs_in_onnxruntime_and_matches_the_head(graph: bytes) -> None:
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
    head, _ = split(graph, "joined")
    with torch.no_grad():
        expected = head(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(truncate(graph, "joined"), x), expected, rtol=1e-4, atol=1e-4)


def test_a_channels_last_cut_is_handed_over_channels_first(graph: bytes) -> None:
    # "a0" is the batch norm's output in the NHWC layout the Keras export uses, (n, 15, 15, 8).
    assert channels_last(graph, "a0") and not channels_last(graph, "joined")
    head, tail = split(graph, "a0")
    x = np.random.default_rng(4).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        cut = head(torch.from_numpy(x))
        whole = to_torch(graph)(torch.from_numpy(x))
    assert cut.shape == (2, 8, 15, 15)
    torch.testing.assert_close(tail(cut), whole, rtol=1e-5, atol=1e-5)
    # onnxruntime's truncated graph gives the same channels-first map.
    truncated = truncate(graph, "a0")
    out = ort.InferenceSession(truncated, providers=["CPUExecutionProvider"]).get_outputs()[0]
    assert out.shape[1:] == [8, 15, 15]
    np.testing.assert_allclose(_ort(truncated, x), cut.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_cuts_and_operators_are_refused_by_name(graph: bytes) -> None:
    # "p1" is on one branch only: the residual conv "r1" skips it.
    with pytest.raises(ValueError, match="skips it"):
        split(graph, "p1")
    with pytest.raises(ValueError, match="no tensor named 'nope'"):
        split(graph, "nope")
    assert "joined" in tensor_names(graph, "Add")
    model = onnx.load_model_from_string(graph)
    model.graph.node[5].op_type = "Softsign"
    with pytest.raises(ValueError, match="Softsign"):
        to_torch(model.SerializeToString())
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        to_torch(b"not onnx")
