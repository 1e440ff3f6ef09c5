"""Run records: every job leaves ``runs/<id>.json`` on storage (config, timings, outcome,
summaries), and ``vsearch runs list|show`` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import main
from vsearch.storage import Storage
from vsearch.storage.runs import RunRecord, RunStore, new_run_id, redacted

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _record(job: str, seconds: float, **kw) -> RunRecord:
    return RunRecord(id=new_run_id(job), job=job, started="2026-11-30T00:00:00+00:00",
                     seconds=seconds, **kw)  # fmt: skip


def test_the_store_lists_newest_first_finds_prefixes_and_skips_foreign_files(
    tmp_path: Path,
) -> None:
    storage = Storage(str(tmp_path))
    store = RunStore(storage)
    with pytest.raises(FileNotFoundError, match="no run records"):
        store.get("latest")
    a = _record("reindex", 1.0, summaries={"reindex": {"index version (published)": "i1",
                                                        "model version": "m1"}})  # fmt: skip
    b = _record("index publish", 2.0, outcome="failed", error="ValueError: no such version")
    a.id, b.id = "20261130T000001-reindex-aaaaaa", "20261130T000002-index-publish-bbbbbb"
    store.write(a)
    store.write(b)
    storage.write_text("runs/notes.json", "{not a record")
    assert [r.id for r in store.list()] == [a.id, b.id]  # oldest first; the foreign file skipped
    assert [r.id for r in store.list(limit=1)] == [b.id]
    assert [r.id for r in store.list(job="index")] == [b.id]
    assert store.get("latest").id == b.id and store.get("20261130T000001").id == a.id
    assert a.versions() == {"index": "i1", "model": "m1"}
    with pytest.raises(ValueError, match="ambiguous"):
        store.get("20261130T00000")
    with pytest.raises(FileNotFoundError, match="vsearch runs list"):
        store.get("nope")
    with pytest.raises(ValueError, match=r"notes\.json is not a run record"):
        store.read("notes")


def test_jobs_leave_records_that_runs_list_and_show_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--config", str(TINY), "--set", f"storage={tmp_path}"]
    assert main(["generate", *common]) == 0
    capsys.readouterr()  # its progress bars
    # A failing command on existing storage is recorded as failed, with its error in one line.
    assert main(["index", "publish", "i-none", *common]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vsearch index publish:") and err.count("\n") == 1
    runs = RunStore(Storage(str(tmp_path))).list()
    assert [(r.job, r.outcome) for r in runs] == [
        ("generate", "succeeded"),
        ("index publish", "failed"),
    ]
    generate, publish = runs
    assert generate.summaries["dataset"]["products"] > 0
    assert generate.config["storage"].endswith(str(tmp_path))
    assert generate.seconds is not None and generate.finished is not None
    assert generate.argv[:1] == ["generate"]
    assert publish.error and "i-none" in publish.error

    assert main(["runs", "list", *common]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("run") and len(out) == 3
    assert "generate" in out[1] and "succeeded" in out[1] and "failed" in out[2]
    assert main(["runs", "show", "latest", *common]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == publish.id and shown["outcome"] == "failed"
    assert main(["runs", "show", "no-such-run", *common]) == 1
    assert "vsearch runs show: no run" in capsys.readouterr().err


def test_a_failure_on_empty_storage_writes_no_record(tmp_path: Path) -> None:
    store = tmp_path / "empty"
    assert main(["index", "publish", "i-none", "--config", str(TINY),
                 "--set", f"storage={store}"]) == 1  # fmt: skip
    assert not store.exists()


def test_records_never_hold_storage_credentials() -> None:
    config = {"storage": "s3://b/v", "storage_options": {"key": "AKIA1", "secret": "s3cr3t",
              "client_kwargs": {"region_name": "eu-west-1"}, "session_token": "t"}}  # fmt: skip
    options = redacted(config)["storage_options"]
    assert options["key"] == options["secret"] == options["session_token"] == "***"
    assert options["client_kwargs"] == {"region_name": "eu-west-1"}
    assert config["storage_options"]["key"] == "AKIA1"  # the caller's dict is left alone
