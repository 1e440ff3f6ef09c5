"""The `vsearch` command: subcommands parse, bad configuration is a clear error (exit 2)."""

from __future__ import annotations

import pytest

from jobs.cli import build_parser, main


def test_subcommands_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--once", "--set", "train.epochs=1", "--set", "serve.port=0"])
    assert args.command == "demo" and args.once and args.set == ["train.epochs=1", "serve.port=0"]
    assert parser.parse_args(["train", "--run-name", "r1"]).run_name == "r1"
    assert parser.parse_args(["search", "--url", "http://x", "a.jpg"]).image == "a.jpg"


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
