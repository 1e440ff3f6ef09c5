"""``ray job submit`` against a running cluster: a tiny generate -> train -> reindex submitted
through the job server of a local head runs on that cluster (it does not start a private Ray),
succeeds, and its logs carry the jobs' summaries."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

import pytest
from conftest import dashboard_head

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_a_submitted_job_runs_on_the_cluster_it_was_submitted_to(tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    # The head requires a token (Ray's token auth); the job's driver inherits it, and the
    # client sends it.
    token = secrets.token_hex(16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # fmt: skip
    with dashboard_head(env) as port:
        client = JobSubmissionClient(
            f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        )
        vsearch = Path(sys.executable).with_name("vsearch")
        common = f"--config configs/tiny.yaml --set storage={tmp_path}"
        entry = " && ".join(f"{vsearch} {job} {common}" for job in ("generate", "train", "reindex"))
        # The head's job agent comes up a little after the dashboard: retry until it takes jobs.
        deadline = time.monotonic() + 120
        while True:
            try:
                job = client.submit_job(
                    entrypoint=entry, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}
                )
                break
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        deadline = time.monotonic() + 600
        status = client.get_job_status(job)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(2)
            status = client.get_job_status(job)
        logs = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-3000:]
        assert "== train ==" in logs and "== reindex ==" in logs
        # Its driver joined this cluster: the job server saw it connect.
        assert client.get_job_info(job).driver_info is not None
        assert (tmp_path / "indexes" / "CURRENT").read_text().strip().startswith("i")
