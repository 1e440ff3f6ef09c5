"""A reindex killed part-way (SIGKILL to the job and its whole local Ray cluster) leaves the
published version serving; running it again publishes a complete version: every readable
catalogue image once, none missing, none twice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from vsearch.config import Config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _kill_tree(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the job's process group, then every process of its Ray cluster (they all carry
    the cluster's temporary folder on their command line)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)


def test_a_killed_reindex_leaves_the_published_version_and_a_rerun_completes(
    tiny_config: Config, tmp_path: Path
) -> None:
    from jobs import reindex, train
    from vsearch.storage import IndexStore, Storage, read_dataset

    cfg = tiny_config
    train.main(cfg)
    published = reindex.main(cfg)
    store = IndexStore(Storage(cfg.storage))
    assert store.current() == published.version

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text((REPO / "configs" / "tiny.yaml").read_text())
    ray_tmp = f"/tmp/rk{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "jobs.cli", "reindex", "--config", str(config_file)]
    argv += ["--set", f"storage={cfg.storage}"]
    log = tmp_path / "reindex.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        # Kill it once its Ray cluster is up and the embedding actors are starting (their
        # first log line), or 10 s after Ray started.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not Path(ray_tmp).exists():
            time.sleep(0.2)
        started = time.monotonic()
        while proc.poll() is None and time.monotonic() - started < 10:
            if "CatalogStager" in log.read_text():
                break
            time.sleep(0.2)
        finished_early = proc.poll() is not None
        _kill_tree(proc, ray_tmp)
    if finished_early:
        pytest.fail(f"the reindex finished before it could be killed:\n{log.read_text()[-2000:]}")

    assert store.current() == published.version  # still serving what was published
    unfinished = [v for v in store.versions() if not v["complete"]]
    assert all(not v["current"] for v in unfinished)

    again = reindex.main(cfg)
    assert store.current() == again.version != published.version
    shards = store.load_shards(store.manifest())
    ids = [i for s in shards for i in s.meta["image_id"].to_pylist()]
    catalog = read_dataset(Storage(cfg.storage), "datasets/synthetic").catalog
    assert len(ids) == len(set(ids))  # none twice
    assert set(ids) == set(catalog["image_id"].to_pylist())  # none missing
