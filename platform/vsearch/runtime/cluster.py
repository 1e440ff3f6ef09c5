"""Starting and stopping Ray for a job: a private local cluster by default, never a stray join."""

from __future__ import annotations

import collections
import logging
import os
import random
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from vsearch.config import IndexConfig, RayConfig, ServeConfig

#: Environment every Ray worker gets: one thread per library, no usage reporting.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Train v2 re-routes worker print() through its logger *and* the console, so each progress
    # line would reach the driver twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Training workers and split coordinators drive Ray Data executions of their own: no INFO
    # lines ("Starting execution ...", "Execution plan ...") from them.
    "RAY_DATA_LOG_LEVEL": "WARNING",
}


#: Loggers of Ray internals whose warnings need no action from a user of these jobs.
QUIET_LOGGERS = (
    # Ray Train's placement-group cleaner asks the State API every second whether the train
    # controller is alive; a cluster started without the dashboard does not serve that API, so
    # it warns "Failed to query Ray Train Controller actor state" about once a second.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
)


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process of our sessions (``worker_process_setup_hook``)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Progress bars are off on purpose (jobs draw their own): no notice that they are.
    from ray.util import log_once

    log_once("ray_data_progress_manager_disabled")
    # Ray Train's dataset manager sets an execution option that Ray itself deprecates.
    warnings.filterwarnings("ignore", message=r".*exclude_resources.*is deprecated")


#: ``quiet_worker_logs`` by import path, as Ray's runtime environment names it.
SETUP_HOOK = f"{__name__}.{quiet_worker_logs.__name__}"


def serve_env(cfg: ServeConfig | None) -> dict[str, str]:
    """Environment of the Ray processes for ``serve.throughput_optimized``: the settings of
    Serve's throughput-optimised mode that apply here, one by one (the mode's own switch,
    ``RAY_SERVE_THROUGHPUT_OPTIMIZED``, would also give every ingress replica a port of its own,
    send the replicas' output to log files only, and print its settings at start-up). Empty
    when it is off or there is no service."""
    if cfg is None or not cfg.throughput_optimized:
        return {}
    return {
        # gRPC between the deployments and from the proxy, instead of Ray actor calls.
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
        # Each replica's code and its router on the replica's main event loop (no thread hops).
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    }


#: Environment of a private local cluster that runs the service: on 2 busy cores a replica that
#: loads a model (the re-ranker's MiniLM, the ONNX backbone) takes 30-40 s to start while the
#: others start beside it, and Serve would warn about every one after 30 s.
LOCAL_SERVE_ENV = {"RAY_SERVE_SLOW_STARTUP_WARNING_S": "120"}


#: Ray's workers take ports up to 19999 by default (``--max-worker-port``).
_ABOVE_RAY_WORKERS = 20000

#: The ports this process was handed most recently: none is handed out twice while its owner
#: may not have bound it yet (several ports for one ``ray start`` are chosen before it runs).
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=256)


def _ephemeral_ports() -> tuple[int, int]:
    """The range the OS hands out for ``bind(port 0)`` (Linux; the common default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _hand_out(port: int) -> int:
    _HANDED_OUT.append(port)
    return port


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago.

    Chosen at random between Ray's worker ports and the OS's ephemeral range, so that a process
    started next (a Ray head's GCS, raylet and agents bind port 0, i.e. the ephemeral range) cannot
    be handed the same port before its owner binds it. Falls back to an ephemeral port when that
    band is missing or full."""
    low, _ = _ephemeral_ports()
    if low - _ABOVE_RAY_WORKERS >= 1000:
        rng = random.SystemRandom()
        for _ in range(64):
            port = rng.randrange(_ABOVE_RAY_WORKERS, low)
            if port not in _HANDED_OUT and _is_free(host, port):
                return _hand_out(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return _hand_out(int(sock.getsockname()[1]))


def quiet_ray_data() -> None:
    """Jobs show their own progress bars and summaries: turn off Ray Data's progress output (in a
    log file it becomes a block of INFO lines every 10 s) and its notice that it is off."""
    from ray.data import DataContext
    from ray.util import log_once

    DataContext.get_current().enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # marks the notice as already shown
    logging.getLogger("ray.data").setLevel(logging.WARNING)


#: Set by Ray's job supervisor in the environment of a submitted job's driver.
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def session_address(cfg: RayConfig) -> str:
    """The address a job's Ray session uses: ``cfg.address``, except that a job submitted to a
    cluster (``ray job submit``) joins that cluster instead of starting a private one: the GCS
    address its job supervisor puts in ``RAY_ADDRESS`` ("auto" would take the cluster started
    last on the machine, which need not be the one the job was submitted to)."""
    if cfg.address == "local" and os.environ.get(SUBMITTED_JOB_ENV):
        return os.environ.get("RAY_ADDRESS") or "auto"
    return cfg.address


@contextmanager
def ray_session(cfg: RayConfig, serve: ServeConfig | None = None) -> Iterator[None]:
    """Run the body inside Ray; start it (and shut it down after) unless already initialised.

    ``address="local"`` always starts a new private cluster with ``num_cpus`` CPUs, unless the
    job was submitted with ``ray job submit`` (then it joins the cluster it runs on); any other
    address joins that cluster. A session that will run the service passes ``serve``: a private
    cluster then starts with its Serve settings (:func:`serve_env`, and
    :data:`LOCAL_SERVE_ENV`; values already in the environment win).
    """
    if ray.is_initialized():
        yield
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    address = session_address(cfg)
    if os.environ.get(SUBMITTED_JOB_ENV):
        # A submitted job may bring a runtime env of its own (`--runtime-env-json`): combine it
        # with the one below instead of refusing to start.
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    kwargs: dict = {
        "address": address,
        "include_dashboard": False,
        "log_to_driver": True,
        "logging_level": logging.WARNING,  # no "Started a local Ray instance" line
        "runtime_env": {
            "env_vars": dict(WORKER_ENV),
            "worker_process_setup_hook": SETUP_HOOK,
        },
    }
    if address == "local":
        kwargs["num_cpus"] = cfg.num_cpus
        if cfg.object_store_memory:
            kwargs["object_store_memory"] = cfg.object_store_memory
    # A running cluster's processes have their environment already.
    wanted = serve_env(serve) | LOCAL_SERVE_ENV if address == "local" and serve is not None else {}
    extra = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(extra)  # inherited by the processes Ray starts, and only by them
    try:
        ray.init(**kwargs)
    finally:
        for key in extra:
            os.environ.pop(key, None)
    quiet_ray_data()
    # A private cluster's session folder (its logs) is removed after a job that succeeded, so
    # that nightly runs do not pile them up; a failed job's is kept for its logs.
    session_dir = _session_dir() if address == "local" and not cfg.keep_session_logs else None
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        ray.shutdown()
        if session_dir and not failed:
            shutil.rmtree(session_dir, ignore_errors=True)


def _session_dir() -> str | None:
    """The session folder of the Ray node this driver started (None when unknown: Ray keeps it
    on a private attribute, read defensively)."""
    try:
        from ray._private import worker

        path = worker._global_node.get_session_dir_path()
    except Exception:  # the private attribute moved: keep the folder rather than guess
        return None
    return path if isinstance(path, str) and os.path.basename(path).startswith("session_") else None


def actor_gpus(setting: str | float, actors: int, have: float) -> float:
    """GPUs each of ``actors`` embedding actors asks for, given the cluster's ``have`` GPUs:
    ``setting`` "auto" shares them out (at most one an actor; 0 without GPUs), a number is
    taken as it is (a clear error when the cluster has fewer GPUs than one actor needs)."""
    if setting == "auto":
        return 0.0 if have <= 0 else min(1.0, have / max(1, actors))
    value = float(setting)
    if value > 0 and have < value:
        raise ValueError(
            f"index.gpus_per_actor is {value:g} but the cluster has {have:g} GPU(s); "
            "set it to auto or 0, or add GPU nodes"
        )
    return value


def embedding_gpus(cfg: IndexConfig, actors: int | None = None, enabled: bool = True) -> float:
    """:func:`actor_gpus` of ``cfg.gpus_per_actor`` on the connected cluster (0 when GPUs are
    switched off: ``ray.use_gpus``)."""
    return cluster_gpus(cfg.gpus_per_actor, actors or cfg.embed_actors, enabled)


def cluster_gpus(setting: str | float, actors: int, enabled: bool = True) -> float:
    """:func:`actor_gpus` on the connected cluster's GPUs; 0 when ``enabled`` is False."""
    if not enabled or setting == 0:
        return 0.0
    return actor_gpus(setting, actors, float(ray.cluster_resources().get("GPU", 0)))
