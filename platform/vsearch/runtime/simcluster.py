"""A simulated autoscaling Ray cluster on one machine: node autoscaling without a cloud.

Ray's cluster launcher has a "fake multinode" node provider: the autoscaler (``monitor.py`` on
the head) "launches" a worker node by starting one more raylet, with the node type's resources, on
the same machine. ``simulated_cluster`` writes such an autoscaling config, with the worker node
types named as in ``cluster.yaml`` (``cpu_worker``, ``gpu_worker``) but given small simulated
resources, starts the head with ``ray start --head --block`` in a session of its own (free ports
everywhere, a private temporary folder), yields a handle with the GCS address, and on exit stops
exactly that cluster: the head and every worker node the autoscaler started, never anything else
on the machine (no ``ray stop``). ``NodeCountSampler`` logs the alive worker nodes of each type
over time from a connected driver.

How the cluster is stopped, and why it is safe: every process of the cluster descends from the
``ray start`` process, which starts a new session; Ray never calls ``setsid`` for its own
processes, so they all keep that session id (the simulated worker nodes too: the autoscaler spawns
their raylets as its own children, without fate-sharing, so they would outlive the head). Stopping
signals process ids only, chosen by that session id or by the cluster's private temporary folder
on their command line: first SIGTERM to the worker nodes' raylets (children of the autoscaler)
while the GCS still runs, then SIGTERM to the ``ray start`` process (its handler stops the head's
processes), then SIGTERM and, after a grace period, SIGKILL to anything of the cluster still left.
The ``ray start`` process is reaped only after that, so its process id (the session id) cannot be
reused by an unrelated process meanwhile; a stopped cluster is never signalled again.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from vsearch.runtime.cluster import free_port

logger = logging.getLogger(__name__)

#: The node type the fake provider gives the head (``FAKE_HEAD_NODE_TYPE`` in Ray's provider).
HEAD_NODE_TYPE = "ray.head.default"

#: Label put on every simulated worker node: its node type, so samplers can tell types apart.
NODE_TYPE_LABEL = "vsearch.io/node-type"

#: Worker node types named as in ``cluster.yaml``, with small simulated resources; none starts
#: until work asks for it (``min_workers`` 0).
DEFAULT_NODE_TYPES: dict[str, dict[str, Any]] = {
    "cpu_worker": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2},
    "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 1},
}

#: Environment variables of Ray's token authentication.
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

#: Object store of every simulated node: small, there are several on one machine.
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024**2


def autoscaling_config(
    node_types: Mapping[str, Mapping[str, Any]],
    gcs_address: str,
    idle_timeout_minutes: float,
    *,
    head_resources: Mapping[str, float] | None = None,
    upscaling_speed: float = 1.0,
    object_store_bytes: int | None = DEFAULT_OBJECT_STORE_BYTES,
    cluster_name: str = "vsearch-sim",
) -> dict[str, Any]:
    """The autoscaling config of a fake-multinode cluster whose GCS listens on ``gcs_address``.

    ``node_types``: worker node type name -> ``{"resources": {...}, "min_workers": n,
    "max_workers": m}`` (optional ``"labels"``). The config is complete (Ray's monitor reads it
    as it is, without the cluster launcher's defaults); the provider is told the GCS address, or
    it would start worker nodes against port 6379.
    """
    available: dict[str, dict[str, Any]] = {}
    max_total = 0
    for name, spec in node_types.items():
        if name == HEAD_NODE_TYPE:
            raise ValueError(f"{HEAD_NODE_TYPE!r} is the head's node type")
        unknown = set(spec) - {"resources", "min_workers", "max_workers", "labels"}
        if unknown:
            raise ValueError(f"node type {name!r}: unknown keys {sorted(unknown)}")
        resources = {k: float(v) for k, v in dict(spec.get("resources", {})).items()}
        if object_store_bytes and "object_store_memory" not in resources:
            # The fake provider takes it out of the resources and sizes the node's store with it.
            resources["object_store_memory"] = int(object_store_bytes)
        low, high = int(spec.get("min_workers", 0)), int(spec.get("max_workers", 1))
        if not 0 <= low <= high:
            raise ValueError(f"node type {name!r}: need 0 <= min_workers <= max_workers")
        available[name] = {
            "resources": resources,
            "labels": {NODE_TYPE_LABEL: name, **dict(spec.get("labels", {}))},
            "node_config": {},
            "min_workers": low,
            "max_workers": high,
        }
        max_total += high
    available[HEAD_NODE_TYPE] = {
        "resources": dict(head_resources or {}),
        "node_config": {},
        "max_workers": 0,
    }
    return {
        "cluster_name": cluster_name,
        "max_workers": max_total,
        "upscaling_speed": upscaling_speed,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            # Every simulated node has the head's IP: the autoscaler must key nodes by node id.
            "use_node_id_as_ip": True,
            # Nothing to set up on a node (no SSH, no setup commands): the provider starts it.
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {},
        "docker": {},
        "available_node_types": available,
        "head_node_type": HEAD_NODE_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# --- processes ------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, parent pid, session id)`` from ``/proc/<pid>/stat``; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def cluster_processes(session_id: int, temp_dir: str) -> list[int]:
    """Live processes of one simulated cluster: those in session ``session_id`` (the ``ray
    start`` process's) or whose command line names its private ``temp_dir``. Never this
    process, never a zombie."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        if stat[2] == session_id or temp_dir in _cmdline(pid):
            found.append(pid)
    return sorted(found)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _exited(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has exited, without reaping it (its pid stays reserved until we do)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


# --- the cluster -----------------------------------------------------------------------------


@dataclass
class SimulatedCluster:
    """A running simulated cluster: ``address`` is its GCS address (``ray.init(address=...)``)."""

    address: str
    temp_dir: str
    #: The cluster's private authentication token (``RAY_AUTH_TOKEN``); ``connect`` uses it.
    token: str = field(repr=False)
    config_path: Path
    log_path: Path
    node_types: dict[str, dict[str, Any]]
    process: subprocess.Popen = field(repr=False)
    stopped: bool = False

    @property
    def session_id(self) -> int:
        return self.process.pid

    def processes(self) -> list[int]:
        """Process ids of every live process of this cluster (head and simulated workers)."""
        return cluster_processes(self.session_id, self.temp_dir)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the ``ray start`` output and of the autoscaler's log (for failures)."""
        parts = []
        with contextlib.suppress(OSError):
            parts.append(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        for monitor in sorted(Path(self.temp_dir).glob("session_*/logs/monitor.log")):
            with contextlib.suppress(OSError):
                parts.append(monitor.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join("\n".join(p) for p in parts)

    def driver_env(self) -> dict[str, str]:
        """Environment variables a driver process needs to join this cluster (``ray.init`` with
        ``address``): its authentication settings."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def worker_node_processes(self) -> list[int]:
        """The simulated worker nodes' own processes (raylet, log monitor): children of the
        autoscaler, which starts them. Their raylets stop their workers and agents."""
        parents = {pid: stat[1] for pid in self.processes() if (stat := _stat(pid))}
        monitors = {
            pid
            for pid, parent in parents.items()
            if parent == self.process.pid and "autoscaler/_private/monitor.py" in _cmdline(pid)
        }
        return [pid for pid, parent in parents.items() if parent in monitors]

    def _wait_gone(self, pids: list[int], timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        alive = [p for p in pids if p in self.processes()]
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if p in self.processes()]
        return alive

    def stop(self, grace_s: float = 5.0, sweep_grace_s: float = 2.0) -> list[int]:
        """Stop every simulated worker node, then the head, then whatever of the cluster is left.

        1. SIGTERM to the worker nodes' raylets and log monitors while the GCS still runs (they
           shut down cleanly: a raylet whose GCS is gone waits for it instead of exiting).
        2. SIGTERM to the ``ray start --block`` process: its handler stops the head's processes.
        3. SIGTERM to every process still in the cluster's session or naming its temporary folder,
           SIGKILL to those left after ``sweep_grace_s`` (Ray's runtime-env agent gives its HTTP
           connections up to 60 s on SIGTERM).

        Returns the process ids of step 3. Raises if any process of the cluster survives. A
        second call does nothing."""
        if self.stopped:
            return []
        proc = self.process
        if not _exited(proc):
            workers = self.worker_node_processes()
            _signal_all(workers, signal.SIGTERM)
            self._wait_gone(workers, grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and not _exited(proc):
                time.sleep(0.1)
        swept = self.processes()
        _signal_all(swept, signal.SIGTERM)
        leftovers = self._wait_gone(swept, sweep_grace_s)
        if leftovers:
            logger.info(
                "SIGKILL to %d process(es) of the simulated cluster: %s",
                len(leftovers),
                "; ".join(_cmdline(pid)[:60].strip() for pid in leftovers),
            )
            _signal_all(leftovers, signal.SIGKILL)
            self._wait_gone(leftovers, 10.0)
        # Reap the head only now: until then its pid, the session id, cannot be reused.
        if not _exited(proc):
            proc.kill()
        proc.wait(timeout=10)
        self.stopped = True
        survivors = self.processes()
        if survivors:
            raise RuntimeError(f"processes of the simulated cluster survived: {survivors}")
        return swept


def _ray_cli() -> str:
    """The ``ray`` command of this interpreter's environment."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


@contextmanager
def simulated_cluster(
    node_types: Mapping[str, Mapping[str, Any]] | None = None,
    head_cpus: int = 0,
    idle_timeout_minutes: float = 0.1,
    *,
    upscaling_speed: float = 1.0,
    object_store_bytes: int | None = DEFAULT_OBJECT_STORE_BYTES,
    start_timeout_s: float = 90.0,
    keep_temp_dir: bool = False,
    env: Mapping[str, str] | None = None,
) -> Iterator[SimulatedCluster]:
    """Start a simulated autoscaling cluster; yield its handle; stop all of it on exit.

    ``node_types``: worker node types (``DEFAULT_NODE_TYPES``: ``cpu_worker`` {"CPU": 1} up to 2,
    ``gpu_worker`` {"CPU": 1, "GPU": 1} up to 1, none at start). ``head_cpus``: the head's CPUs
    (0: any task needing a CPU makes the autoscaler add a worker node). ``idle_timeout_minutes``:
    how long a worker node stays idle before the autoscaler removes it. The autoscaler runs its
    update loop every second (``AUTOSCALER_UPDATE_INTERVAL_S=1``).
    """
    from ray._private.services import get_node_ip_address

    types = copy.deepcopy(dict(node_types if node_types is not None else DEFAULT_NODE_TYPES))
    # A short private folder: Ray's socket paths under it have a length limit.
    temp_dir = os.path.join(tempfile.gettempdir(), f"vsim{uuid.uuid4().hex[:8]}")
    os.makedirs(temp_dir)
    port = free_port()
    gcs_address = f"{get_node_ip_address()}:{port}"
    config = autoscaling_config(
        types,
        gcs_address,
        idle_timeout_minutes,
        head_resources={"CPU": head_cpus},
        upscaling_speed=upscaling_speed,
        object_store_bytes=object_store_bytes,
    )
    config_path = Path(temp_dir) / "autoscaling.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = Path(temp_dir) / "ray-start.log"
    cmd = [
        _ray_cli(),
        "start",
        "--head",
        f"--port={port}",
        f"--autoscaling-config={config_path}",
        f"--num-cpus={int(head_cpus)}",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        # The dashboard's HTTP server stays off, but its head process still binds a port.
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        # Workers bind ports the OS picks, as the simulated worker nodes' do (not 10002-19999,
        # the range every other Ray cluster on the machine draws from).
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
        "--block",
    ]
    if object_store_bytes:
        cmd.append(f"--object-store-memory={int(object_store_bytes)}")
    # Token authentication with a token of its own (not the user's ~/.ray/auth_token): every
    # process of the cluster inherits it, a driver joins with ``connect``.
    token = secrets.token_hex(32)
    child_env = {
        **{k: v for k, v in os.environ.items() if k not in AUTH_ENV},
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_FAKE_CLUSTER": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # On SIGTERM the head would first drain (wait up to 30 s for its workers, e.g. a detached
        # Ray Data coordinator actor, to go idle): a simulation has nothing to hand over.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        **(env or {}),
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )
    cluster = SimulatedCluster(
        address=gcs_address,
        temp_dir=temp_dir,
        token=token,
        config_path=config_path,
        log_path=log_path,
        node_types=types,
        process=proc,
    )
    try:
        address_file = Path(temp_dir) / "ray_current_cluster"
        deadline = time.monotonic() + start_timeout_s
        while not address_file.exists():
            if _exited(proc):
                raise RuntimeError(f"ray start exited early:\n{cluster.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the simulated head did not start in {start_timeout_s:.0f} s")
            time.sleep(0.25)
        yield cluster
    finally:
        cluster.stop()
        if not keep_temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _reload_auth_settings() -> None:
    """Make this process read ``RAY_AUTH_*`` again (Ray caches the mode and the token)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def connect(cluster: SimulatedCluster, **init_kwargs: Any) -> Iterator[None]:
    """Connect this process as a driver of ``cluster`` (``ray.init``); disconnect on exit and put
    this process's authentication settings back as they were."""
    if ray.is_initialized():
        raise RuntimeError("this process is already connected to Ray")
    saved = {name: os.environ.get(name) for name in AUTH_ENV}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token})
    _reload_auth_settings()
    try:
        init_kwargs.setdefault("logging_level", logging.WARNING)
        ray.init(address=cluster.address, **init_kwargs)
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_auth_settings()


# --- node counts ---------------------------------------------------------------------------


def node_type_of(node: Mapping[str, Any]) -> str | None:
    """The worker node type of one ``ray.nodes()`` entry (its ``NODE_TYPE_LABEL``, which every
    simulated worker node carries); None for the head."""
    labels = node.get("Labels") or {}
    return labels.get(NODE_TYPE_LABEL)


def node_counts(node_types: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Alive worker nodes of each type in ``node_types``, from the connected driver's
    ``ray.nodes()`` (the head is not counted)."""
    counts = dict.fromkeys(node_types, 0)
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        kind = node_type_of(node)
        if kind in counts:
            counts[kind] += 1
    return counts


def autoscaler_status() -> dict[str, int]:
    """What the autoscaler reported last (its status record in the GCS, as ``ray status`` reads
    it), from the connected driver: ``launching``, worker nodes asked for and not up yet;
    ``demand``, resource bundles (tasks, actors) waiting for a node. Zeros before the first
    report."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    if not raw:
        return {"launching": 0, "demand": 0}
    status = json.loads(raw)
    report = status.get("autoscaler_report") or {}
    launching = sum((report.get("pending_launches") or {}).values())
    launching += len(report.get("pending_nodes") or [])
    demand = (status.get("load_metrics_report") or {}).get("resource_demand") or []
    return {"launching": int(launching), "demand": int(sum(count for _, count in demand))}


@dataclass
class Sample:
    """One reading of ``NodeCountSampler``: seconds since it started, worker nodes per type, and
    whatever ``extra()`` returned then."""

    t: float
    counts: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def workers(self) -> int:
        return sum(self.counts.values())


class NodeCountSampler:
    """Samples ``node_counts`` every ``interval_s`` in a background thread of a connected driver.

    ``extra``: called at every sample, its dict is kept with it (e.g. ``autoscaler_status``).
    Use as a context manager; ``samples`` holds the timeline, ``mark(name)`` notes a moment."""

    def __init__(
        self,
        node_types: Mapping[str, Mapping[str, Any]],
        interval_s: float = 1.0,
        extra: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.node_types = dict(node_types)
        self.interval_s = interval_s
        self.extra = extra
        self.samples: list[Sample] = []
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-count-sampler", daemon=True)
        self._began = time.monotonic()
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def mark(self, name: str) -> float:
        self.marks[name] = t = self.elapsed()
        return t

    def sample(self) -> Sample:
        counts = node_counts(self.node_types)
        extra = dict(self.extra()) if self.extra else {}
        reading = Sample(self.elapsed(), counts, extra)
        with self._lock:
            self.samples.append(reading)
        return reading

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # a failed reading must not end the timeline
                logger.debug("node count sample failed", exc_info=True)
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def wait_for(self, predicate: Callable[[Sample], bool], timeout_s: float) -> Sample | None:
        """Wait until a sample taken from now on satisfies ``predicate``; return it (None on
        timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            seen = len(self.samples)
        while time.monotonic() < deadline:
            with self._lock:
                fresh = self.samples[seen:]
                seen += len(fresh)
            for reading in fresh:
                if predicate(reading):
                    return reading
            time.sleep(min(0.2, self.interval_s))
        return None

    def peak(self) -> dict[str, int]:
        with self._lock:
            return {k: max((s.counts[k] for s in self.samples), default=0) for k in self.node_types}

    def __enter__(self) -> NodeCountSampler:
        self._began = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
