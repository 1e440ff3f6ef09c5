"""Shared test set-up: one thread per library, tiny configs on temporary storage, a local S3."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import pytest
import torch

from vsearch.config import Config, load_config

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_config(tmp_path: Path) -> Config:
    """``configs/tiny.yaml`` with storage in a fresh temporary folder."""
    return load_config(REPO / "configs" / "tiny.yaml", [f"storage={tmp_path / 'store'}"])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port), for the whole session."""
    from moto.server import ThreadedMotoServer

    from vsearch.runtime.cluster import free_port

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def make_tiny_onnx(with_tail: bool = False) -> bytes:
    """A 3 -> 2048-channel, stride-32 convolution + ReLU on 224 px: the shape of the Xception
    feature-map export (``xception_onnx``), in a few MB, built with ``onnx.helper``.

    ``with_tail``: a 3 -> 64-channel convolution + ReLU (tensor "cut", a ``(64, 7, 7)`` map), then
    a 1x1 convolution to 2048 channels + ReLU: a backbone that can train after "cut"."""
    import numpy as np
    import onnx  # noqa: F401  (the dev extra installs it)
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    first = 64 if with_tail else 2048
    weights = [
        numpy_helper.from_array(rng.normal(size=(first, 3, 32, 32)).astype(np.float32) * 0.01, "w")
    ]
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv"], strides=[32, 32])]
    if with_tail:
        weights.append(
            numpy_helper.from_array(rng.normal(size=(2048, 64, 1, 1)).astype(np.float32) * 0.1, "p")
        )
        nodes += [
            helper.make_node("Relu", ["conv"], ["cut"]),
            helper.make_node("Conv", ["cut", "p"], ["proj"]),
            helper.make_node("Relu", ["proj"], ["feature_map"]),
        ]
    else:
        nodes.append(helper.make_node("Relu", ["conv"], ["feature_map"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, ["batch", 2048, 7, 7])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="session")
def tiny_onnx() -> bytes:
    return make_tiny_onnx()


#: A head node with the dashboard (job server, Serve's deploy API) on a given port and the given
#: logical CPUs, until its stdin closes.
_HEAD = """
import sys, ray
ray.init(address="local", num_cpus=int(sys.argv[2]), include_dashboard=True,
         dashboard_host="127.0.0.1", dashboard_port=int(sys.argv[1]), logging_level="ERROR")
print("ready", flush=True)
sys.stdin.read()
ray.shutdown()
"""


@contextmanager
def dashboard_head(env: dict[str, str], num_cpus: int = 2, tries: int = 3) -> Iterator[int]:
    """A local Ray head in its own process, its dashboard on 127.0.0.1 at the port it yields;
    shut down on exit (its stdin closed, killed after 60 s). A head that fails to start (its
    dashboard port taken in the moment between choosing and binding it) is retried on another
    port."""
    from vsearch.runtime.cluster import free_port

    for attempt in range(tries):
        port = free_port()
        head = subprocess.Popen(
            [sys.executable, "-c", _HEAD, str(port), str(num_cpus)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )  # fmt: skip
        assert head.stdout is not None
        if head.stdout.readline().strip() == "ready":
            break
        head.wait(timeout=60)
        if attempt == tries - 1:
            raise AssertionError(
                f"the Ray head did not start in {tries} tries (exit {head.returncode})"
            )
    try:
        yield port
    finally:
        if head.stdin is not None:
            head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
