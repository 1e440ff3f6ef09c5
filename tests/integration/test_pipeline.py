"""The whole path on a local Ray cluster at a tiny size: generate -> train (and resume) ->
reindex (with a corrupt catalogue image) -> serve -> HTTP, plus a failed reindex that must leave
the published index serving."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsearch.config import Config, load_config
from vsearch.index.manifest import Manifest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Running:
    cfg: Config
    manifest: Manifest
    url: str
    first_version: str
    resumed_version: str
    catalog_rows: int


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    from jobs import generate, reindex, train
    from serve.app import running_service
    from serve.client import SearchClient
    from vsearch.runtime.cluster import ray_session
    from vsearch.storage import Storage, read_dataset

    store = tmp_path_factory.mktemp("pipeline")
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        # 4 logical CPUs: room for a second copy of the app (the guarded one) beside the first.
        [
            f"storage={store}",
            "serve.max_upload_bytes=300000",
            "serve.top_k=3",
            "ray.num_cpus=4",
            "serve.reload_interval_s=1",
            "serve.reload_grace_s=2",
            # The train photos vote for the category: every request reads reference shards.
            "category.vote_gallery=reference",
        ],
    )
    with ray_session(cfg.ray, cfg.serve):
        prefix = generate.main(cfg)
        storage = Storage(cfg.storage)
        ds = read_dataset(storage, prefix)
        storage.write_bytes(ds.catalog["image_uri"][0].as_py(), b"\xff\xd8\xff garbage")
        one_epoch = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})})
        first = train.main(one_epoch, run_name="resume-me")
        resumed = train.main(cfg, run_name="resume-me")
        manifest = reindex.main(cfg, resumed)
        with running_service(cfg) as url:
            SearchClient(url).wait_ready()
            yield Running(cfg, manifest, url, first, resumed, ds.catalog.num_rows)


@pytest.fixture
def client(running: Running):
    from serve.client import SearchClient

    return SearchClient(running.url)


def _query_bytes(cfg: Config) -> tuple[bytes, str]:
    from vsearch.storage import Storage, read_dataset

    storage = Storage(cfg.storage)
    ds = read_dataset(storage, "datasets/synthetic")
    row = ds.queries_of("test").slice(0, 1).to_pylist()[0]
    return storage.read_bytes(row["image_uri"]), row["category"]


def test_training_resumed_from_checkpoint(running: Running) -> None:
    from vsearch.storage import ModelStore, Storage

    models = ModelStore(Storage(running.cfg.storage))
    _, first = models.load(running.first_version)
    _, resumed = models.load(running.resumed_version)
    assert first.info["epochs_done"] == 1 and first.info["resumed_from_epoch"] == 0
    assert resumed.info["epochs_done"] == 2 and resumed.info["resumed_from_epoch"] == 1


def test_reindex_counts_and_skips_the_corrupt_image(running: Running) -> None:
    stats = running.manifest.stats
    assert stats["skipped"] == 1
    assert stats["embedded"] == running.catalog_rows - 1 == running.manifest.total_count
    # The train split's photos were embedded into reference shards for the category vote.
    from serve.client import SearchClient
    from vsearch.storage import Storage, read_dataset

    ds = read_dataset(Storage(running.cfg.storage), "datasets/synthetic")
    train = ds.queries_of("train").num_rows
    assert stats["reference_photos"] == train == running.manifest.reference_count > 0
    assert SearchClient(running.url).health()["reference_photos"] == train
    assert {e.role for e in running.manifest.shards} == {"catalog", "reference"}


def test_search_over_http(running: Running, client) -> None:
    data, _ = _query_bytes(running.cfg)
    resp = client.search(data, k=3)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["index_version"] == running.manifest.version
    assert body["model_version"] == running.resumed_version
    results = body["results"]
    assert 1 <= len(results) <= 3
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert len({r["product_id"] for r in results}) == len(results)  # one row per product
    # One forward pass also gave the predicted category (which routed the search) and the box.
    names = set(running.manifest.categories)
    assert body["category"]["name"] in names and 0 < body["category"]["probability"] <= 1
    from vsearch.storage import Storage, read_dataset

    ds = read_dataset(Storage(running.cfg.storage), "datasets/synthetic")
    catalogue = set(ds.catalog["image_id"].to_pylist())
    assert {r["image_id"] for r in results} <= catalogue  # never a reference photo
    assert body["routed_by"] == "model" and body["category"]["name"] in body["searched_categories"]
    assert {r["category"] for r in results} <= set(body["searched_categories"])
    x0, y0, x1, y1 = body["box"]
    assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1


def test_catalogue_images_and_products_for_result_pages(running: Running, client) -> None:
    import requests

    data, _ = _query_bytes(running.cfg)
    first = client.search(data, k=1).json()["results"][0]
    image = requests.get(f"{running.url}/images/{first['image_id']}", timeout=30)
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    Image.open(io.BytesIO(image.content)).verify()
    product = requests.get(f"{running.url}/products/{first['product_id']}", timeout=30).json()
    assert product["category"] == first["category"] and first["image_id"] in product["images"]
    for path in ("/images/no-such-image", "/products/no-such-product", "/images/..%2Fsecrets"):
        assert requests.get(f"{running.url}{path}", timeout=30).status_code == 404


def test_raw_body_upload_and_category_filter(running: Running) -> None:
    import requests

    data, category = _query_bytes(running.cfg)
    resp = requests.post(
        f"{running.url}/search", params={"k": 5, "categories": category}, data=data, timeout=30
    )
    assert resp.status_code == 200, resp.text
    assert {r["category"] for r in resp.json()["results"]} == {category}
    assert resp.json()["routed_by"] == "request"


def test_hybrid_text_lifts_the_product_it_names(running: Running, client) -> None:
    """Words re-score the photo's products against the titles embedded at reindex (MiniLM):
    the product whose exact title is sent can only move up, to the top two from second."""
    import base64

    import requests

    assert running.manifest.text is not None and running.manifest.text.products > 0
    data, _ = _query_bytes(running.cfg)
    photo = client.search(data, k=5).json()["results"]
    assert all(r["text_similarity"] is None for r in photo)
    second = photo[1]
    title = requests.get(f"{running.url}/products/{second['product_id']}", timeout=30).json()
    resp = client.search(data, k=3, text=title["title"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["text"] == title["title"]
    hybrid = body["results"]
    named = next(r for r in hybrid if r["product_id"] == second["product_id"])
    assert hybrid.index(named) <= 1 and named["text_similarity"] == pytest.approx(1.0, abs=1e-2)
    w = running.cfg.serve.text_weight
    for r in hybrid:  # quality weights are 0: score = (1 - w) * photo + w * text
        assert r["score"] == pytest.approx((1 - w) * r["similarity"] + w * r["text_similarity"],
                                           abs=1e-4)  # fmt: skip
    assert [r["score"] for r in hybrid] == sorted((r["score"] for r in hybrid), reverse=True)
    # The same query as JSON with the photo in base64 gives the same answer.
    payload = {"image": base64.b64encode(data).decode(), "text": title["title"]}
    as_json = requests.post(f"{running.url}/search", params={"k": 3}, json=payload, timeout=30)
    assert as_json.status_code == 200, as_json.text
    assert [r["product_id"] for r in as_json.json()["results"]] == [r["product_id"] for r in hybrid]
    long = client.search(data, text="x" * (running.cfg.serve.max_text_chars + 1))
    assert long.status_code == 400 and "text_too_long" in long.json()["detail"]
    for bad in ({"image": "%%%"}, {"photo": "x"}):
        refused = requests.post(f"{running.url}/search", json=bad, timeout=30)
        assert refused.status_code == 400 and "bad_" in refused.json()["detail"]


def test_default_k_comes_from_config(running: Running) -> None:
    import requests

    data, _ = _query_bytes(running.cfg)
    resp = requests.post(f"{running.url}/search", data=data, timeout=30)
    assert resp.status_code == 200
    assert running.cfg.serve.top_k == 3
    assert len(resp.json()["results"]) == 3


def test_health(client) -> None:
    health = client.health()
    assert health["status"] == "ok" and health["shards"] >= 1


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


def _big_png() -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        (b"not an image at all", 400, "not_an_image"),
        (_gif(), 415, "format_not_allowed"),
        (_big_png(), 413, "exceeds"),
    ],
)
def test_bad_uploads_get_4xx_with_reason(client, payload: bytes, status: int, reason: str) -> None:
    resp = client.search(payload)
    assert resp.status_code == status
    assert reason in resp.json()["detail"]


def test_missing_image_and_bad_k(running: Running) -> None:
    import requests

    empty = requests.post(f"{running.url}/search", data=b"", timeout=30)
    assert empty.status_code == 400 and "no image" in empty.json()["detail"]
    wrong_field = requests.post(
        f"{running.url}/search", files={"photo": ("x.jpg", b"x")}, timeout=30
    )
    assert wrong_field.status_code == 400 and "'image'" in wrong_field.json()["detail"]
    data, _ = _query_bytes(running.cfg)
    bad_k = requests.post(f"{running.url}/search", params={"k": 0}, data=data, timeout=30)
    assert bad_k.status_code == 422


def test_failed_reindex_leaves_published_index_serving(running: Running, client) -> None:
    from jobs import reindex
    from vsearch.runtime.cluster import ray_session
    from vsearch.storage import IndexStore, Storage

    with ray_session(running.cfg.ray), pytest.raises(Exception, match="m-does-not-exist"):
        reindex.main(running.cfg, model_version="m-does-not-exist")
    assert IndexStore(Storage(running.cfg.storage)).current() == running.manifest.version
    data, _ = _query_bytes(running.cfg)
    assert client.search(data).status_code == 200


def test_readyz_metrics_and_stage_timings(running: Running, client) -> None:
    import requests

    ready = requests.get(f"{running.url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    data, _ = _query_bytes(running.cfg)
    body = client.search(data, k=2).json()
    timings = body["timings_ms"]
    assert set(timings) == {"read", "decode", "embed", "vote", "search", "rerank", "total"}
    assert timings["total"] >= max(v for s, v in timings.items() if s != "total")
    client.search(b"not an image")
    text = requests.get(f"{running.url}/metrics", timeout=30).text
    assert 'vsearch_requests_total{code="200",endpoint="/search"}' in text
    assert 'vsearch_errors_total{reason="not_an_image"}' in text
    assert 'vsearch_stage_seconds_count{stage="embed"}' in text
    assert 'vsearch_stage_seconds_count{stage="vote"}' in text
    assert f'index_version="{running.manifest.version}"' in text


def _length(reply: bytes) -> int:
    """The content-length an HTTP reply's headers announce (0 when none arrived yet)."""
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return 0


def test_a_chunked_upload_over_the_limit_is_refused_before_it_is_read_whole(
    running: Running,
) -> None:
    import select
    import socket
    from urllib.parse import urlparse

    url = urlparse(running.url)
    limit = running.cfg.serve.max_upload_bytes  # 300 kB in this module's config
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        reply = b""
        while sent < 50_000_000:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                reply = sock.recv(65536)
                break
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:  # the server closed the connection after answering
                break
            sent += len(chunk)
            time.sleep(0.001)  # about 60 MB/s: a fast client, not an instant one
        sock.settimeout(10)
        # The status line, headers and body may arrive in separate segments: read them all.
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            more = sock.recv(65536)
            if not more:
                break
            reply += more
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"too large" in reply
    # Refused while the upload was still going: far from all 50 MB was sent (loopback buffers
    # and the proxy let some megabytes through before the refusal comes back).
    print(f"refused after {sent} bytes sent (limit {limit})")
    assert sent < 25_000_000, f"sent {sent} bytes before the refusal"


def test_token_and_rate_limit_on_a_guarded_app(running: Running, tmp_path: Path) -> None:
    import requests
    from ray import serve

    from serve.app import AppArgs, build_app

    token_file = tmp_path / "token"
    token_file.write_text("t0k3n\n")
    serve_cfg = running.cfg.serve.model_copy(
        update={"require_auth": True, "auth_token_file": str(token_file),
                "rate_limit_per_s": 0.2, "rate_limit_burst": 2}
    )  # fmt: skip
    cfg = running.cfg.model_copy(update={"serve": serve_cfg})
    serve.run(build_app(AppArgs(config=cfg.model_dump())), name="guarded",
              route_prefix="/guarded")  # fmt: skip
    try:
        base = f"{running.url}/guarded"
        data, _ = _query_bytes(running.cfg)
        anonymous = requests.post(f"{base}/search", data=data, timeout=60)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        wrong = requests.post(f"{base}/search", data=data, timeout=60,
                              headers={"Authorization": "Bearer nope"})  # fmt: skip
        assert wrong.status_code == 401
        assert requests.get(f"{base}/metrics", timeout=30).status_code == 401
        assert requests.get(f"{base}/healthz", timeout=30).status_code == 200  # stays open
        auth = {"Authorization": "Bearer t0k3n"}
        codes = [
            requests.post(f"{base}/search", data=data, headers=auth, timeout=60).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        limited = requests.post(f"{base}/search", data=data, headers=auth, timeout=60)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    finally:
        serve.delete("guarded")


CHROMIUM = "/usr/bin/chromium"
#: Flags for Debian's Chromium headless on a machine with no outside network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_the_web_page_in_a_real_browser(running: Running, tmp_path: Path) -> None:
    """Upload a catalogue photo through the page in headless Chromium: its product comes first,
    the box is drawn and the category shown; words refine it; a screenshot goes to reports/."""
    from playwright.sync_api import sync_playwright

    from vsearch.storage import Storage, read_dataset

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: `make test` installs it"
    storage = Storage(running.cfg.storage)
    ds = read_dataset(storage, "datasets/synthetic")
    # A product without duplicate listings (a re-upload of it could rightly come first), and
    # not the first catalogue image, which the fixture corrupted.
    pairs = ds.duplicates.to_pylist() if ds.duplicates is not None else []
    listed = {r["product_id"] for r in pairs} | {r["duplicate_of"] for r in pairs}
    row = next(r for r in ds.catalog.to_pylist()[1:] if r["product_id"] not in listed)
    photo = tmp_path / "query.png"
    photo.write_bytes(storage.read_bytes(row["image_uri"]))
    shot = REPO / "reports" / "browser-search.png"
    shot.parent.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(f"{running.url}/")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector(".result", timeout=60_000)
            first = page.locator(".result").first
            assert first.get_attribute("data-product-id") == row["product_id"]
            assert page.locator("#summary .category").inner_text().startswith("Category: ")
            assert page.locator("#error").inner_text() == ""
            # The result images load from /images/{id}.
            page.wait_for_function(
                "() => [...document.querySelectorAll('.result img')]"
                ".every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000,
            )
            # The box was drawn: the canvas holds the photo with a red frame.
            red = page.evaluate(
                """() => { const c = document.getElementById('photo');
                           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                           let n = 0; for (let i = 0; i < d.length; i += 4)
                             if (d[i] > 240 && d[i + 1] < 70 && d[i + 2] < 70) n++;
                           return n; }"""
            )
            assert red > 20
            # Words refine the same photo's results (sent as the multipart field `text`).
            words = page.locator(".result .title").nth(1).inner_text()
            page.fill("#words", words)
            page.press("#words", "Enter")
            page.wait_for_selector("text=Refined by", timeout=60_000)
            page.wait_for_selector(".result", timeout=60_000)
            assert "(text " in page.locator(".result .score").first.inner_text()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_a_searcher_replica_killed_under_load_fails_nothing(running: Running) -> None:
    """Two replicas of every deployment; one shard searcher replica is killed while four
    clients search: no request fails (after one retry by the client) and answers keep coming
    (the longest pause between answers is measured and must stay under 2 s)."""
    import threading

    import ray
    import requests
    from ray import serve

    from serve.app import AppArgs, build_app
    from serve.client import SearchClient

    # No rate limit: four clients without pause may pass it, and 429s are not this test's.
    serve_cfg = running.cfg.serve.model_copy(
        update={"max_replicas": 2, "min_replicas": 2, "rate_limit_per_s": 0}
    )
    cfg = running.cfg.model_copy(update={"serve": serve_cfg})
    serve.run(build_app(AppArgs(config=cfg.model_dump())), name="replicated",
              route_prefix="/replicated")  # fmt: skip
    try:
        base = f"{running.url}/replicated"
        SearchClient(base).wait_ready()
        data, _ = _query_bytes(running.cfg)
        done: list[tuple[float, int]] = []
        retried: list[int] = []
        stop = threading.Event()

        def client() -> None:
            session = requests.Session()
            while not stop.is_set():
                status = 0
                for _attempt in range(2):  # one retry, as a client would
                    try:
                        status = session.post(f"{base}/search", data=data, timeout=30).status_code
                    except requests.RequestException:
                        status = -1
                    if status == 200:
                        break
                    retried.append(status)
                done.append((time.monotonic(), status))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(3)
        replicas = [
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::replicated#ShardSearcher0#")
        ]  # fmt: skip
        assert len(replicas) == 2, replicas
        killed = time.monotonic()
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        time.sleep(6)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        after = sorted(t for t, _ in done if t > killed)
        gaps = [b - a for a, b in zip([killed, *after], after, strict=False)]
        print(f"{len(done)} searches, {len(after)} after the kill, longest pause "
              f"{max(gaps):.2f} s, first attempts refused: {retried}")  # fmt: skip
        assert [s for _, s in done if s != 200] == []
        assert len(after) > 20 and max(gaps) < 2.0
    finally:
        serve.delete("replicated")


# Keep these last: they change the published version that the tests above expect.


def test_hot_reload_under_a_request_stream(running: Running, tmp_path: Path) -> None:
    """A delta version published while one client searches all the time: the service switches
    to it with no failed request, never goes back, and the deleted image is gone after."""
    import threading

    import requests

    from jobs import index_admin
    from vsearch.storage import IndexStore, Storage, read_dataset

    storage = Storage(running.cfg.storage)
    store = IndexStore(storage)
    before = store.current()
    row = read_dataset(storage, "datasets/synthetic").catalog.slice(5, 1).to_pylist()[0]
    photo = storage.read_bytes(row["image_uri"])
    seen: list[tuple[int, str, list[str]]] = []
    stop = threading.Event()

    # Below the service's per-client rate limit (every test's client is 127.0.0.1): a stream
    # without pause reaches it now that a search takes a few ms, and 429s are not this test's.
    pause = 1.5 / running.cfg.serve.rate_limit_per_s

    def stream() -> None:
        session = requests.Session()
        while not stop.is_set():
            time.sleep(pause)
            resp = session.post(f"{running.url}/search", params={"k": 3}, data=photo, timeout=60)
            body = resp.json()
            seen.append((resp.status_code, body.get("index_version", ""),
                         [r["image_id"] for r in body.get("results", [])]))  # fmt: skip

    client = threading.Thread(target=stream)
    client.start()
    try:
        time.sleep(1.0)
        ids = tmp_path / "gone.txt"
        ids.write_text(row["image_id"] + "\n")
        published = index_admin.change(running.cfg, ids_file=str(ids))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(v == published.version for _, v, _ in seen):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        client.join(timeout=60)
    assert [c for c, _, _ in seen if c != 200] == []
    versions = [v for _, v, _ in seen]
    switch = versions.index(published.version)
    assert switch > 0 and set(versions[:switch]) == {before}
    assert set(versions[switch:]) == {published.version}  # never back to the old one
    assert row["image_id"] in seen[0][2]
    assert all(row["image_id"] not in found for _, _, found in seen[switch:])
    print(f"{len(seen)} searches, switched after {switch}")


def test_a_damaged_version_is_refused_and_the_served_one_kept(running: Running) -> None:
    import requests

    from vsearch.storage import IndexStore, Storage

    storage = Storage(running.cfg.storage)
    store = IndexStore(storage)
    good = store.manifest()
    bad = good.model_copy(update={"version": good.version + "-damaged"})
    for entry in good.shards:  # copy the shard files the good version reads into the new one
        src = f"indexes/{entry.folder(good.version)}/shards/{entry.name}"
        for name in entry.files:
            storage.write_bytes(f"indexes/{bad.version}/shards/{entry.name}/{name}",
                                storage.read_bytes(f"{src}/{name}"))  # fmt: skip
    # Its text channel is the good version's file (intact): only the vectors are damaged.
    text = good.text.model_copy(update={"location": good.text.folder(good.version)})
    bad = bad.model_copy(
        update={
            "shards": [e.model_copy(update={"location": None}) for e in good.shards],
            "text": text,
        }
    )
    victim = f"indexes/{bad.version}/shards/{bad.shards[0].name}/vectors.faiss"
    data = bytearray(storage.read_bytes(victim))
    data[-1] ^= 0xFF
    storage.write_bytes(victim, bytes(data))
    store.publish(bad)
    deadline = time.monotonic() + 30
    ready: dict = {}
    while time.monotonic() < deadline:
        ready = requests.get(f"{running.url}/readyz", timeout=30).json()
        if ready.get("reload_error"):
            break
        time.sleep(0.3)
    assert ready["ready"] is True and ready["index_version"] == good.version
    assert bad.version in ready["reload_error"] and "vectors.faiss" in ready["reload_error"]
    data_q, _ = _query_bytes(running.cfg)
    resp = requests.post(f"{running.url}/search", data=data_q, timeout=60)
    assert resp.status_code == 200 and resp.json()["index_version"] == good.version
