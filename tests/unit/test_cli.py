"""The `vsearch` command: subcommands parse, bad configuration is a clear error (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import build_parser, main


def test_subcommands_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--once", "--set", "train.epochs=1", "--set", "serve.port=0"])
    assert args.command == "demo" and args.once and args.set == ["train.epochs=1", "serve.port=0"]
    assert parser.parse_args(["train", "--run-name", "r1"]).run_name == "r1"
    assert parser.parse_args(["search", "--url", "http://x", "a.jpg"]).image == "a.jpg"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--help"], "vsearch index add|update ROWS.parquet"),
        (["train", "--help"], "train the search network (Ray Train)"),
        (["index", "rollback", "--help"], "serve the previously published one"),
        (["runs", "show", "--help"], "one run's whole record (JSON)"),
    ],
)
def test_help_says_what_a_command_does(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert says in out and "``" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--set", "train.epochz=1"], "epochz"),
        (["generate", "--set", "train.epochs"], "section.key=value"),
        (["generate", "--config", "no/such/file.yaml"], "no/such/file.yaml"),
    ],
)
def test_bad_configuration_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vsearch: bad configuration:") and message in err


def test_a_yaml_syntax_error_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: var\ndata: [unclosed\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "YAML syntax error at line 3" in err


def test_search_without_a_server_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from vsearch.runtime.cluster import free_port

    image = tmp_path / "q.jpg"
    image.write_bytes(b"x")
    assert main(["search", "--url", f"http://127.0.0.1:{free_port()}", str(image)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach" in err and "vsearch serve" in err
    assert main(["search", "--url", "http://127.0.0.1:9", str(tmp_path / "none.jpg")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_evaluate_on_empty_storage_fails_before_writing(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "empty"
    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    assert main(["evaluate", "--config", str(tiny), "--set", f"storage={store}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vsearch reindex" in err
    assert not store.exists()


def test_missing_s3_credentials_are_one_line(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    options = json.dumps(
        {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}
    )
    argv = ["generate", "--config", str(tiny), "--set", "storage=s3://vsearch-none/root",
            "--set", f"storage_options={options}"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no S3 credentials for s3://vsearch-none/root" in err
