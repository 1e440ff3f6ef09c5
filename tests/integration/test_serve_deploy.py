"""``serve deploy serve/config.yaml`` on a running cluster: the shipped deploy file (its app, its
per-deployment settings and its configs/prod.yaml) deploys through the head's dashboard and the
service answers, with the token its non-loopback ``serve.host`` requires.

Only the listening address is changed for the test (127.0.0.1 and a free port instead of
0.0.0.0:8123); storage comes from ``$VSEARCH_STORAGE`` as on a cluster, here a tiny published
index on local disk."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import dashboard_head

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _published_tiny_index(store: Path) -> tuple[str, bytes]:
    """Generate, train (one epoch) and reindex the tiny config into ``store``; returns the
    published index version and one query photo."""
    from jobs import generate, reindex, train
    from vsearch.config import load_config
    from vsearch.runtime.cluster import ray_session
    from vsearch.storage import Storage, read_dataset

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"storage={store}", "train.epochs=1"])
    with ray_session(cfg.ray):
        prefix = generate.main(cfg)
        manifest = reindex.main(cfg, train.main(cfg))
    storage = Storage(cfg.storage)
    query = read_dataset(storage, prefix).queries_of("test").slice(0, 1).to_pylist()[0]
    return manifest.version, storage.read_bytes(query["image_uri"])


def test_the_shipped_serve_config_deploys_and_answers(tmp_path: Path) -> None:
    import requests

    from vsearch.runtime.cluster import free_port

    version, photo = _published_tiny_index(tmp_path / "store")
    http_port = free_port()
    token = secrets.token_hex(16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "VSEARCH_STORAGE": str(tmp_path / "store"), "VSEARCH_API_TOKEN": token}  # fmt: skip
    conf = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    conf["http_options"].update(host="127.0.0.1", port=http_port)
    deploy_file = tmp_path / "serve.yaml"
    deploy_file.write_text(yaml.safe_dump(conf))

    with dashboard_head(env, num_cpus=4) as dashboard:
        serve_cli = Path(sys.executable).with_name("serve")
        address = f"http://127.0.0.1:{dashboard}"
        # The dashboard's Serve API comes up a little after the head: retry a short while.
        deadline = time.monotonic() + 120
        while True:
            done = subprocess.run(
                [str(serve_cli), "deploy", str(deploy_file), "--address", address],
                capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
            )  # fmt: skip
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 300
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = requests.get(f"{base}/readyz", timeout=10)
                if ready.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(2)
        status = subprocess.run([str(serve_cli), "status", "--address", address],
                                capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert ready is not None and ready.status_code == 200, status.stdout[-3000:]
        # Every deployment the file names is running, with the file's settings.
        listed = yaml.safe_load(io.StringIO(status.stdout))
        app = listed["applications"]["vsearch"]
        assert app["status"] == "RUNNING"
        named = {d["name"] for d in conf["applications"][0]["deployments"]}
        assert set(app["deployments"]) == named
        assert all(d["status"] == "HEALTHY" for d in app["deployments"].values())

        # The app reads prod.yaml's serve.host (0.0.0.0): a token is required.
        files = {"image": ("q.png", photo, "image/png")}
        assert requests.post(f"{base}/search", files=files, timeout=60).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        reply = requests.post(f"{base}/search", files=files, headers=auth, timeout=60)
        assert reply.status_code == 200, reply.text[:500]
        body = reply.json()
        assert body["index_version"] == version and body["results"]
