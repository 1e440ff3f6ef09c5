"""Node autoscaling on Ray's simulated cluster launcher (the fake-multinode provider): the mine job
submitted to a head with no CPUs makes the autoscaler add worker nodes, mines the same triplets
as the in-process core, and once it is done and the idle timeout has passed the worker nodes are
removed again. Nothing of the cluster outlives the test."""

from __future__ import annotations

import os
import posixpath
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vsearch.config import load_config
from vsearch.training.click_mining import TRIPLET_SCHEMA, ProductCategories, mine_click_log

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

#: 4 categories x 10 products x 5 train views: 200 click sessions.
OVERRIDES = [
    "data.synthetic.categories=4",
    "data.synthetic.products_per_category=10",
    "data.synthetic.views_per_product=6",
    "data.synthetic.image_size=32",
    # Two mining actors of 1 CPU each: the head has none, so both need worker nodes.
    "mine.actors=2",
    "mine.cpus_per_actor=1",
    "mine.partitions=4",
]


def _sorted_rows(table) -> list[tuple]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


def test_a_job_on_the_head_alone_adds_worker_nodes_and_they_go_when_idle(tmp_path: Path) -> None:
    from jobs.common import ensure_dataset, storage_of
    from vsearch.runtime.simcluster import (
        NodeCountSampler,
        cluster_processes,
        connect,
        simulated_cluster,
    )
    from vsearch.storage import read_dataset

    storage_url = str(tmp_path / "store")
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"storage={storage_url}", *OVERRIDES])
    prefix = ensure_dataset(cfg)  # in this process, before the job: no Ray needed for it
    job_log = tmp_path / "mine.log"
    argv = [
        sys.executable,
        "-m",
        "jobs.cli",
        "mine",
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
    ]
    for item in [f"storage={storage_url}", *OVERRIDES]:
        argv += ["--set", item]

    with simulated_cluster(head_cpus=0, idle_timeout_minutes=0.1) as cluster:
        temp_dir = cluster.temp_dir
        with connect(cluster, log_to_driver=False), NodeCountSampler(cluster.node_types, 0.5) as s:
            first = s.wait_for(lambda sample: True, timeout_s=10)
            assert first is not None and first.workers == 0, "worker nodes before any work"
            # The job is a driver of its own, as `vsearch mine` with ray.address set: when it
            # exits, nothing of it (objects, actors) keeps a worker node busy.
            started = s.mark("job started")
            with open(job_log, "w") as out:
                job = subprocess.run(
                    [*argv, "--set", f"ray.address={cluster.address}"],
                    cwd=REPO,
                    env={**os.environ, **cluster.driver_env(), "OMP_NUM_THREADS": "1"},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=150,
                    check=False,
                )
            ended = s.mark("job ended")
            assert job.returncode == 0, job_log.read_text()[-4000:] + "\n" + cluster.log_tail()
            during = [x for x in s.samples if started <= x.t <= ended]
            peak = max((x.workers for x in during), default=0)
            assert peak > 0, f"no worker node joined during the job: {s.samples}"
            assert s.peak()["cpu_worker"] <= 2 and s.peak()["gpu_worker"] <= 1  # max_workers
            back = s.wait_for(lambda sample: sample.workers == 0, timeout_s=60)
            assert back is not None, (
                f"worker nodes still up 60 s after the job: {s.samples[-1]}\n{cluster.log_tail()}"
            )
        print(
            f"\nfirst worker node after {min(x.t for x in during if x.workers) - started:.1f} s, "
            f"job {ended - started:.1f} s, peak {s.peak()}, "
            f"back to 0 workers {back.t - ended:.1f} s after the job"
        )
        assert cluster.processes(), "the cluster should still be up inside the block"

    # Stopped: no process of the cluster is left, its temporary folder is gone.
    assert cluster_processes(cluster.session_id, temp_dir) == []
    assert not os.path.exists(temp_dir)

    # The job's result is the core's: the same triplets from the same click log.
    storage = storage_of(cfg)
    version = storage.read_text("triplets/LATEST").strip()
    got = pq.read_table(storage.path(f"triplets/{version}"), schema=TRIPLET_SCHEMA)
    data = read_dataset(storage, prefix)
    assert data.clicks is not None and data.clicks.num_rows == 200
    expected, stats = mine_click_log(
        data.clicks, ProductCategories.from_table(data.catalog), cfg.mine
    )
    assert got.num_rows == expected.num_rows > 0
    assert _sorted_rows(got) == _sorted_rows(expected)
    assert stats["sessions"] == 200
    assert storage.exists(posixpath.join("triplets", version, "_stats.json"))
