"""``vsearch``: one entry point with a subcommand per job.

    vsearch demo [--once]        generate -> train -> reindex -> evaluate -> serve -> report
    vsearch generate|mine|train|reindex|evaluate
    vsearch dedup [--products FILE]   duplicate listings: image, text and BM25 channels
    vsearch nightly              reindex, evaluate, publish only past the quality gate
    vsearch index list|publish VERSION|rollback|gc --keep N   index versions on storage
    vsearch index add|update ROWS.parquet | delete IDS   change the served index between reindexes
    vsearch serve                serve the published index until Ctrl-C
    vsearch runs list|show RUN   the record every job leaves on storage (runs/<id>.json)
    vsearch search --url URL [--text WORDS] photo.jpg

Every subcommand takes ``--config FILE`` and repeatable ``--set section.key=value`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vsearch.config import Config, load_config


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.set)


def _serve(cfg: Config) -> None:
    from serve.app import auth_settings, running_service
    from vsearch.runtime.cluster import ray_session

    auth = auth_settings(cfg)  # a missing token is reported before Ray starts
    with ray_session(cfg.ray, cfg.serve), running_service(cfg) as url:
        note = ", Bearer token required" if auth["require_auth"] else ""
        print(
            f"Serving at {url} (POST /search, GET /healthz /readyz /metrics{note}). Ctrl-C stops."
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def _search(args: argparse.Namespace) -> int:
    import requests

    from serve.client import SearchClient

    try:
        data = Path(args.image).read_bytes()
    except OSError as exc:
        print(f"vsearch search: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        resp = SearchClient(args.url).search(data, k=args.k, text=args.text)
    except requests.ConnectionError:
        print(
            f"vsearch search: cannot reach {args.url}: is `vsearch serve` running there?",
            file=sys.stderr,
        )
        return 1
    except requests.Timeout:
        print(f"vsearch search: {args.url} did not answer in time", file=sys.stderr)
        return 1
    try:
        body = resp.json()
    except ValueError:
        print(
            f"vsearch search: HTTP {resp.status_code} from {args.url} (not JSON)", file=sys.stderr
        )
        return 1
    if resp.status_code != 200:
        print(f"HTTP {resp.status_code}: {body.get('detail')}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _subcommands(parser: argparse.ArgumentParser, dest: str) -> Any:
    """``parser``'s required subcommands, each of whose ``--help`` opens with its one-line help
    (argparse shows a subcommand's help only in its parent's list otherwise)."""
    sub = parser.add_subparsers(dest=dest, required=True)
    add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        return add(name, **kwargs)

    sub.add_parser = add_parser
    return sub


def build_parser() -> argparse.ArgumentParser:
    summary, _, usage = (__doc__ or "").replace("``", "").partition("\n")
    parser = argparse.ArgumentParser(
        prog="vsearch",
        description=summary,
        epilog=usage.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML config file (defaults apply when omitted)")
    common.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, repeatable"
    )
    sub = _subcommands(parser, "command")
    demo = sub.add_parser("demo", parents=[common], help="run the whole path and report")
    demo.add_argument("--once", action="store_true", help="exit after the report")
    sub.add_parser("generate", parents=[common], help="put the configured dataset on storage")
    sub.add_parser("mine", parents=[common], help="mine click-log triplets (Ray Data)")
    train = sub.add_parser("train", parents=[common], help="train the search network (Ray Train)")
    train.add_argument("--run-name", help="resume/continue this training run")
    reindex = sub.add_parser("reindex", parents=[common], help="embed + index + publish")
    reindex.add_argument("--model-version", help="model to index with (default: latest)")
    evaluate = sub.add_parser("evaluate", parents=[common], help="offline recall of the index")
    evaluate.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the baselines (pooled frozen backbone, untrained network)",
    )
    dedup = sub.add_parser("dedup", parents=[common], help="find duplicate listings")
    dedup.add_argument(
        "--products", metavar="FILE", help="only these listings (ids, one per line, or Parquet)"
    )
    sub.add_parser(
        "nightly", parents=[common], help="reindex, evaluate, publish behind a quality gate"
    )
    index = sub.add_parser(
        "index", parents=[common], help="list, publish, roll back, gc, add, update, delete"
    )
    index_sub = _subcommands(index, "index_command")
    index_sub.add_parser("list", parents=[common], help="versions on storage (* published)")
    publish = index_sub.add_parser("publish", parents=[common], help="serve VERSION (verified)")
    publish.add_argument("version")
    index_sub.add_parser("rollback", parents=[common], help="serve the previously published one")
    gc = index_sub.add_parser("gc", parents=[common], help="delete old and unfinished versions")
    gc.add_argument("--keep", type=int, default=3, help="newest complete versions to keep")
    for name, what in (("add", "add new catalogue rows"), ("update", "add or replace rows")):
        change = index_sub.add_parser(
            name, parents=[common], help=f"{what} (Parquet, catalogue columns) as a delta version"
        )
        change.add_argument("rows", help="Parquet file or URL of catalogue rows")
    delete = index_sub.add_parser(
        "delete", parents=[common], help="delete image ids (Parquet image_id column or text)"
    )
    delete.add_argument("ids", help="Parquet file with image_id, or a text file of one id a line")
    sub.add_parser("serve", parents=[common], help="serve the published index")
    runs = sub.add_parser("runs", parents=[common], help="records of the jobs run on storage")
    runs_sub = _subcommands(runs, "runs_command")
    runs_list = runs_sub.add_parser("list", parents=[common], help="the newest runs, a line each")
    runs_list.add_argument("--limit", type=int, default=20, help="newest runs shown")
    runs_list.add_argument("--job", help="only this job (e.g. reindex, nightly, index)")
    show = runs_sub.add_parser("show", parents=[common], help="one run's whole record (JSON)")
    show.add_argument("run_id", help="a run id, a unique prefix of one, or 'latest'")
    search = sub.add_parser("search", help="query a running service with an image file")
    search.add_argument("--url", required=True, help="service URL, e.g. http://127.0.0.1:8123")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--text", default=None, help="words to refine the results (hybrid)")
    search.add_argument("image", help="path of a photo")
    return parser


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"YAML syntax error{where}: {problem}"


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Errors an operator can act on (a bad config, a missing file or index,
    an unreachable service) end in one line on stderr and a non-zero exit; set
    ``VSEARCH_DEBUG=1`` for the traceback."""
    args = build_parser().parse_args(argv)
    if args.command == "search":
        return _search(args)
    try:
        cfg = _config(args)
    except yaml.YAMLError as exc:
        print(f"vsearch: bad configuration: {args.config}: {_yaml_problem(exc)}", file=sys.stderr)
        return 2
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"vsearch: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "runs":
        return _runs(cfg, args)
    job = _recorded_job(args)
    try:
        if job is None:
            return _run(cfg, args)
        from jobs.common import recorded_run

        with recorded_run(cfg, job, list(sys.argv[1:] if argv is None else argv)):
            return _run(cfg, args)
    except (FileNotFoundError, ValueError, PermissionError, ConnectionError) as exc:
        if os.environ.get("VSEARCH_DEBUG"):
            raise
        print(f"vsearch {job or args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        problem = _storage_problem(exc, cfg.storage)
        if problem is None or os.environ.get("VSEARCH_DEBUG"):
            raise
        print(f"vsearch {job or args.command}: {problem}", file=sys.stderr)
        return 1


def _storage_problem(exc: BaseException, storage: str) -> str | None:
    """One line for an object store's refusal (S3 through botocore: no credentials, access
    denied, an unreachable endpoint); None for anything else."""
    if not type(exc).__module__.startswith(("botocore", "aiobotocore")):
        return None
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            f"no S3 credentials for {storage}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE, or the node's instance role), or storage_options key and secret"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
        return f"cannot reach the S3 endpoint for {storage}: {exc}"
    code = (
        getattr(exc, "response", {}).get("Error", {}).get("Code")
        if hasattr(exc, "response")
        else None
    )
    return f"S3 refused {storage}: {code or name}: {str(exc).splitlines()[0] if str(exc) else name}"


def _recorded_job(args: argparse.Namespace) -> str | None:
    """The job name a run record is kept under; None for commands that change nothing
    (``serve``, ``index list``)."""
    if args.command == "index":
        return None if args.index_command == "list" else f"index {args.index_command}"
    return None if args.command == "serve" else args.command


def _runs(cfg: Config, args: argparse.Namespace) -> int:
    from jobs.common import storage_of
    from vsearch.storage.runs import RunStore

    store = RunStore(storage_of(cfg))
    try:
        if args.runs_command == "show":
            print(json.dumps(store.get(args.run_id).model_dump(), indent=2))
            return 0
        records = store.list(limit=args.limit, job=args.job)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vsearch runs {args.runs_command}: {exc}", file=sys.stderr)
        return 1
    if not records:
        print(f"no run records under {store.storage.url('runs')}")
        return 0
    head = f"{'run':<38} {'job':<16} {'outcome':<12} {'seconds':>8}  versions / error"
    print(head)
    for r in records:
        versions = " ".join(f"{k}={v}" for k, v in r.versions().items())
        detail = r.error if r.outcome == "failed" else versions
        seconds = "-" if r.seconds is None else f"{r.seconds:.1f}"
        print(f"{r.id:<38} {r.job:<16} {r.outcome:<12} {seconds:>8}  {detail or ''}")
    return 0


def _run(cfg: Config, args: argparse.Namespace) -> int:
    if args.command == "demo":
        from jobs import demo

        demo.main(cfg, once=args.once)
    elif args.command == "generate":
        from jobs import generate

        generate.main(cfg)
    elif args.command == "mine":
        from jobs import mine

        mine.main(cfg)
    elif args.command == "train":
        from jobs import train

        train.main(cfg, run_name=args.run_name)
    elif args.command == "reindex":
        from jobs import reindex

        reindex.main(cfg, model_version=args.model_version)
    elif args.command == "evaluate":
        from jobs import evaluate

        evaluate.main(cfg, baseline=not args.no_baseline)
    elif args.command == "dedup":
        from jobs import dedup

        dedup.main(cfg, products=args.products)
    elif args.command == "nightly":
        from jobs import nightly

        nightly.main(cfg)
    elif args.command == "index":
        return _index(cfg, args)
    elif args.command == "serve":
        _serve(cfg)
    return 0


def _index(cfg: Config, args: argparse.Namespace) -> int:
    from jobs import index_admin

    if args.index_command == "list":
        index_admin.list_versions(cfg)
    elif args.index_command == "publish":
        index_admin.publish(cfg, args.version)
    elif args.index_command == "rollback":
        index_admin.rollback(cfg)
    elif args.index_command in ("add", "update"):
        index_admin.change(cfg, rows_file=args.rows, replace=args.index_command == "update")
    elif args.index_command == "delete":
        index_admin.change(cfg, ids_file=args.ids)
    else:
        index_admin.gc(cfg, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
