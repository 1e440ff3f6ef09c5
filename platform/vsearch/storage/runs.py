"""Run records: what each job did, kept on storage for operators (``vsearch runs list|show``).

A record is one JSON file ``runs/<id>.json`` per job run: the command, the configuration it ran
with, when it started and ended, its outcome (``succeeded``, ``failed`` with the error in one
line, or ``interrupted``) and the summary blocks the job printed (versions, counts, metrics).
Ids start with the UTC start time, so names sort by time.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from vsearch.storage.fs import Storage

RUNS_DIR = "runs"
Outcome = Literal["running", "succeeded", "failed", "interrupted"]
_RUN_ID = re.compile(r"^\d{8}T\d{6}-")


class RunRecord(BaseModel):
    """One job run as an operator sees it."""

    id: str
    #: The job, e.g. "reindex" or "index publish".
    job: str
    #: The command line after ``vsearch``.
    argv: list[str] = Field(default_factory=list)
    started: str
    finished: str | None = None
    seconds: float | None = None
    outcome: Outcome = "running"
    #: The error of a failed run, in one line.
    error: str | None = None
    #: The configuration as the job validated it (overrides and environment applied; secret
    #: storage options redacted).
    config: dict[str, Any] = Field(default_factory=dict)
    #: The summary blocks the job printed, by title (e.g. {"reindex": {"index version": ...}}).
    summaries: dict[str, dict[str, Any]] = Field(default_factory=dict)
    host: str = ""
    #: The Ray cluster the job joined ("local": one it started itself).
    ray_address: str = ""

    def versions(self) -> dict[str, str]:
        """Model and index versions named in the summaries ("model version", "index version
        (published)", ...), first mention of each kind."""
        found: dict[str, str] = {}
        for rows in self.summaries.values():
            for key, value in rows.items():
                named = "version" in key and isinstance(value, str) and value
                for kind in ("model", "index"):
                    if named and kind not in found and key.startswith((f"new {kind}", kind)):
                        found[kind] = value
        return found


def new_run_id(job: str, now: datetime | None = None) -> str:
    """``<UTC yyyymmddTHHMMSS>-<job words joined by ->-<6 hex>``: sorts by start time."""
    now = now or datetime.now(UTC)
    slug = "-".join(job.split()) or "job"
    return f"{now.strftime('%Y%m%dT%H%M%S')}-{slug}-{secrets.token_hex(3)}"


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot hold turned into strings (numpy scalars become numbers)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return json_safe(item())
        except (TypeError, ValueError):
            pass
    return str(value)


_SECRET = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the values of ``storage_options`` whose names look secret (keys,
    tokens, passwords) replaced by "***": a run record never holds credentials."""
    out = dict(config)
    options = out.get("storage_options")
    if isinstance(options, dict):
        out["storage_options"] = {
            k: "***" if _SECRET.search(str(k)) else v for k, v in options.items()
        }
    return out


class RunStore:
    """Run records under ``runs/`` of a storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _name(self, run_id: str) -> str:
        return posixpath.join(RUNS_DIR, f"{run_id}.json")

    def write(self, record: RunRecord) -> str:
        """Write (or overwrite) ``record``; returns its URL."""
        name = self._name(record.id)
        self.storage.write_text(name, json.dumps(json_safe(record.model_dump()), indent=2))
        return self.storage.url(name)

    def ids(self) -> list[str]:
        """Run ids (files named like :func:`new_run_id`'s), oldest first."""
        names = (n[: -len(".json")] for n in self.storage.list(RUNS_DIR) if n.endswith(".json"))
        return [n for n in names if _RUN_ID.match(n)]

    def get(self, run_id: str) -> RunRecord:
        """The record ``run_id``: a whole id, a unique prefix of one, or "latest".
        ``FileNotFoundError`` / ``ValueError`` (ambiguous) with the ids to choose from."""
        ids = self.ids()
        if not ids:
            raise FileNotFoundError(f"no run records under {self.storage.url(RUNS_DIR)}")
        if run_id == "latest":
            matches = ids[-1:]
        else:
            matches = [i for i in ids if i == run_id] or [i for i in ids if i.startswith(run_id)]
        if not matches:
            raise FileNotFoundError(
                f"no run {run_id!r} under {self.storage.url(RUNS_DIR)} (`vsearch runs list`)"
            )
        if len(matches) > 1:
            raise ValueError(f"run {run_id!r} is ambiguous: {', '.join(matches[:5])}")
        return self.read(matches[0])

    def read(self, run_id: str) -> RunRecord:
        """The record of exactly ``run_id``; ``ValueError`` naming the file when it is not a
        run record."""
        name = self._name(run_id)
        try:
            return RunRecord.model_validate_json(self.storage.read_text(name))
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise ValueError(f"{self.storage.url(name)} is not a run record: {first}") from None

    def list(self, limit: int | None = None, job: str | None = None) -> list[RunRecord]:
        """The newest ``limit`` records (all when None), oldest first, of ``job`` if given;
        files that are not run records are skipped."""
        out: list[RunRecord] = []
        for run_id in reversed(self.ids()):
            if limit is not None and len(out) >= limit:
                break
            try:
                record = self.read(run_id)
            except ValueError:
                continue
            if job is None or record.job == job or record.job.startswith(f"{job} "):
                out.append(record)
        return out[::-1]
