"""`vsearch demo --once` end to end at a tiny size, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_demo_once_prints_the_report(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("vsearch")
    cmd = [
        str(exe),
        "demo",
        "--config",
        "configs/tiny.yaml",
        "--once",
        "--set",
        f"storage={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== vsearch demo report ==" in out
    for line in (
        "Recall@1, binary index + rescore",
        "binary index recall@10 vs exact",
        "latency p50 / p99 (ms)",
        "non-image upload",
    ):
        assert line in out
    assert "HTTP 400" in out
    assert list((tmp_path / "reports").glob("demo-*.json"))
