"""The worker setup hook named in every Ray session silences Ray internals that warn about nothing
a user can act on (measured: 68 "Failed to query Ray Train Controller actor state" lines in an
80 s tiny training run without it, 0 with it)."""

from __future__ import annotations

import importlib
import logging
import os
import shutil

import pytest

from vsearch.runtime import cluster


def test_setup_hook_resolves_and_quiets_the_placement_group_cleaner() -> None:
    module, _, name = cluster.SETUP_HOOK.rpartition(".")
    hook = getattr(importlib.import_module(module), name)
    logger = logging.getLogger(cluster.QUIET_LOGGERS[0])
    logger.setLevel(logging.NOTSET)
    hook()
    assert logger.getEffectiveLevel() == logging.ERROR
    assert not logger.isEnabledFor(logging.WARNING)


def test_a_submitted_job_joins_its_cluster(monkeypatch) -> None:
    from vsearch.config import RayConfig
    from vsearch.runtime.cluster import SUBMITTED_JOB_ENV, session_address

    monkeypatch.delenv(SUBMITTED_JOB_ENV, raising=False)
    assert session_address(RayConfig()) == "local"
    monkeypatch.setenv(SUBMITTED_JOB_ENV, '{"runtime_env": {}}')
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert session_address(RayConfig()) == "auto"
    # The supervisor names the GCS of the cluster the job was submitted to: that one, not the
    # cluster started last on the machine.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert session_address(RayConfig()) == "10.0.0.5:6379"
    assert session_address(RayConfig(address="ray://head:10001")) == "ray://head:10001"


@pytest.mark.ray
def test_a_private_session_folder_is_removed_after_success_and_kept_after_failure() -> None:
    import ray

    from vsearch.config import RayConfig
    from vsearch.runtime.cluster import _session_dir, ray_session

    with ray_session(RayConfig(num_cpus=1)):
        ok = _session_dir()
        assert ok is not None and os.path.isdir(ok)
    assert not os.path.exists(ok) and not ray.is_initialized()
    with pytest.raises(RuntimeError, match="boom"), ray_session(RayConfig(num_cpus=1)):
        failed = _session_dir()
        raise RuntimeError("boom")
    assert failed is not None and os.path.isdir(os.path.join(failed, "logs"))
    shutil.rmtree(failed, ignore_errors=True)
    with ray_session(RayConfig(num_cpus=1, keep_session_logs=True)):
        kept = _session_dir()
    assert kept is not None and os.path.isdir(kept)
    shutil.rmtree(kept, ignore_errors=True)


@pytest.mark.ray
def test_a_serving_session_starts_ray_with_serves_throughput_settings(monkeypatch) -> None:
    import ray

    from vsearch.config import RayConfig, ServeConfig
    from vsearch.runtime.cluster import LOCAL_SERVE_ENV, ray_session, serve_env

    @ray.remote(num_cpus=0.1)
    def seen() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}

    for key in serve_env(ServeConfig()) | LOCAL_SERVE_ENV:
        monkeypatch.delenv(key, raising=False)
    with ray_session(RayConfig(num_cpus=1), ServeConfig()):
        got = ray.get(seen.remote())
    assert got == serve_env(ServeConfig()) | LOCAL_SERVE_ENV
    assert got["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"
    assert got["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    # Only the processes Ray started got them; the driver's environment is as it was.
    assert not any(key in os.environ for key in got)
    with ray_session(RayConfig(num_cpus=1), ServeConfig(throughput_optimized=False)):
        assert ray.get(seen.remote()) == LOCAL_SERVE_ENV
    with ray_session(RayConfig(num_cpus=1)):  # no service: no Serve settings
        assert ray.get(seen.remote()) == {}


def test_embedding_actors_share_the_clusters_gpus_on_auto() -> None:
    from vsearch.runtime.cluster import actor_gpus

    assert actor_gpus("auto", 4, 0) == 0.0  # no GPUs: CPU actors
    assert actor_gpus("auto", 4, 2) == 0.5 and actor_gpus("auto", 2, 8) == 1.0
    assert actor_gpus(0.0, 4, 8) == 0.0  # off, whatever the cluster has
    assert actor_gpus(0.25, 4, 1) == 0.25
    with pytest.raises(ValueError, match="gpus_per_actor is 1 but the cluster has 0 GPU"):
        actor_gpus(1.0, 2, 0)


def test_one_switch_turns_every_stage_off_gpus() -> None:
    from vsearch.runtime.cluster import cluster_gpus
    from vsearch.runtime.training import wants_gpu

    # With ray.use_gpus false nothing asks the cluster (no Ray session needed).
    assert cluster_gpus("auto", 4, enabled=False) == 0.0
    assert cluster_gpus(1.0, 4, enabled=False) == 0.0
    assert wants_gpu(False, 2, 8) is False
