"""The synthetic catalogue generator: determinism, schemas, counts, images, clicks, duplicates."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vsearch.config import SyntheticConfig
from vsearch.data.synthetic import GeneratedCatalog, _clicks, _products, generate_synthetic
from vsearch.schema import CATALOG_SCHEMA, CLICK_SCHEMA, DUPLICATE_SCHEMA, QUERY_SCHEMA

SMALL = SyntheticConfig(
    categories=3,
    products_per_category=4,
    views_per_product=3,
    test_views_per_product=1,
    image_size=64,
    duplicates=2,
)


@pytest.fixture(scope="module")
def gen() -> GeneratedCatalog:
    return generate_synthetic(SMALL)


def _pixels(gen: GeneratedCatalog, uri: str, side: int | None = None) -> np.ndarray:
    img = Image.open(io.BytesIO(gen.images[uri])).convert("RGB")
    if side is not None:
        img = img.resize((side, side), Image.Resampling.BOX)
    return np.asarray(img, np.float32)


def test_same_seed_is_byte_identical_and_other_seed_differs(gen: GeneratedCatalog) -> None:
    again = generate_synthetic(SMALL)
    assert again.images == gen.images
    for name in ("catalog", "queries", "clicks", "duplicates"):
        assert getattr(again.dataset, name).equals(getattr(gen.dataset, name)), name
    other = generate_synthetic(SMALL.model_copy(update={"seed": 1}))
    assert other.images.keys() == gen.images.keys()
    assert sum(other.images[k] != gen.images[k] for k in gen.images) > len(gen.images) // 2
    assert other.dataset.catalog["title"].to_pylist() != gen.dataset.catalog["title"].to_pylist()


def test_tables_follow_the_schemas(gen: GeneratedCatalog) -> None:
    ds = gen.dataset
    assert ds.catalog.schema.equals(CATALOG_SCHEMA)
    assert ds.queries.schema.equals(QUERY_SCHEMA)
    assert ds.clicks is not None and ds.clicks.schema.equals(CLICK_SCHEMA)
    assert ds.duplicates is not None and ds.duplicates.schema.equals(DUPLICATE_SCHEMA)


def test_counts_ids_and_catalogue_rows(gen: GeneratedCatalog) -> None:
    ds = gen.dataset
    n = SMALL.categories * SMALL.products_per_category
    assert ds.catalog.num_rows == n + SMALL.duplicates
    assert ds.duplicates is not None and ds.duplicates.num_rows == SMALL.duplicates
    splits = Counter(ds.queries["split"].to_pylist())
    n_test = n * SMALL.test_views_per_product
    assert splits == {"train": n * SMALL.views_per_product - n_test, "test": n_test}
    assert ds.clicks is not None and ds.clicks.num_rows == splits["train"]
    rows = ds.catalog.to_pylist()
    ids = [r["product_id"] for r in rows]
    assert len(set(ids)) == len(ids) and len({r["image_id"] for r in rows}) == len(rows)
    assert len({r["category"] for r in rows}) == SMALL.categories
    for r in rows:
        attrs = json.loads(r["attributes"])
        assert {"brand", "colour", "pattern", "family"} <= attrs.keys()
        assert attrs["brand"].isupper() and r["title"]
        assert 0.0 <= r["quality"] <= 1.0 and 0.0 <= r["popularity"] <= 1.0
    # The last test_views_per_product views of each product are the test split.
    for q in ds.queries.to_pylist():
        view = int(q["query_id"].rsplit("_", 1)[1])
        want = "test" if view >= SMALL.views_per_product - SMALL.test_views_per_product else "train"
        assert q["split"] == want


def test_every_image_uri_decodes_to_the_configured_size(gen: GeneratedCatalog) -> None:
    ds = gen.dataset
    assert ds.clicks is not None
    uris = set(ds.catalog["image_uri"].to_pylist()) | set(ds.queries["image_uri"].to_pylist())
    assert set(ds.clicks["query_image_uri"].to_pylist()) <= uris
    assert set(gen.images) == uris
    for uri in uris:
        img = Image.open(io.BytesIO(gen.images[uri]))
        assert img.format == "JPEG" and img.mode == "RGB"
        assert img.size == (SMALL.image_size, SMALL.image_size)


def test_boxes_lie_inside_the_image_with_positive_area(gen: GeneratedCatalog) -> None:
    for box in gen.dataset.queries["box"].to_pylist():
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= SMALL.image_size and 0 <= y0 < y1 <= SMALL.image_size
        assert (x1 - x0) * (y1 - y0) >= 16


def test_click_sessions_are_consistent(gen: GeneratedCatalog) -> None:
    ds = gen.dataset
    assert ds.clicks is not None
    truth = {q["query_id"]: q["product_id"] for q in ds.queries.to_pylist()}
    originals = set(truth.values())
    for c in ds.clicks.to_pylist():
        shown = c["shown_product_ids"]
        assert len(shown) == SMALL.shown_per_click and len(set(shown)) == len(shown)
        assert set(shown) <= originals
        assert truth[c["query_id"]] in shown and c["clicked_product_id"] in shown
    stamps = ds.clicks["timestamp"].to_pylist()
    assert stamps == sorted(stamps) and str(stamps[0]).startswith("2026-01-01 00:00:00")


def test_duplicates_point_at_distinct_originals_of_their_category(gen: GeneratedCatalog) -> None:
    ds = gen.dataset
    assert ds.duplicates is not None
    rows = {r["product_id"]: r for r in ds.catalog.to_pylist()}
    dups = ds.duplicates.to_pylist()
    dup_ids = {d["product_id"] for d in dups}
    assert len({d["duplicate_of"] for d in dups}) == len(dups)
    for d in dups:
        assert d["duplicate_of"] in rows and d["duplicate_of"] not in dup_ids
        assert rows[d["product_id"]]["category"] == rows[d["duplicate_of"]]["category"]
        parts = d["kind"].split("+")
        assert set(parts) <= {"crop", "watermark", "title_edit"} and parts[0] != "title_edit"
        if "title_edit" in parts:
            assert rows[d["product_id"]]["title"] != rows[d["duplicate_of"]]["title"]


def test_products_differ_and_duplicates_resemble_their_originals() -> None:
    cfg = SyntheticConfig(
        categories=4, products_per_category=4, views_per_product=2, test_views_per_product=1,
        image_size=48, duplicates=10,
    )  # fmt: skip
    gen = generate_synthetic(cfg)
    rows = {r["product_id"]: r for r in gen.dataset.catalog.to_pylist()}
    by_cat: dict[str, list[str]] = {}
    for pid, r in rows.items():
        if pid.startswith("p"):
            by_cat.setdefault(r["category"], []).append(pid)
    for members in by_cat.values():
        imgs = [_pixels(gen, rows[p]["image_uri"]) for p in members]
        for i in range(len(imgs)):
            for j in range(i):
                assert np.abs(imgs[i] - imgs[j]).mean() > 2.0
    assert gen.dataset.duplicates is not None
    closer = []
    for d in gen.dataset.duplicates.to_pylist():
        dup = _pixels(gen, rows[d["product_id"]]["image_uri"], 16)
        orig = rows[d["duplicate_of"]]
        to_orig = np.abs(dup - _pixels(gen, orig["image_uri"], 16)).mean()
        for other in by_cat[orig["category"]]:
            if other != d["duplicate_of"]:
                closer.append(
                    to_orig < np.abs(dup - _pixels(gen, rows[other]["image_uri"], 16)).mean()
                )
    assert np.mean(closer) > 0.75


@pytest.mark.parametrize("accuracy", [0.9, 0.5])
def test_click_accuracy_matches_the_config(accuracy: float) -> None:
    cfg = SMALL.model_copy(update={"click_accuracy": accuracy})
    cats = [i // 4 for i in range(12)]
    train = [(f"q{k}", f"images/views/q{k}.jpg", k % 12) for k in range(3000)]
    clicks = _clicks(cfg, train, cats).to_pylist()
    pairs = [
        (int(c["clicked_product_id"][1:]), t) for c, (_, _, t) in zip(clicks, train, strict=True)
    ]
    hits = np.mean([clicked == t for clicked, t in pairs])
    assert abs(hits - accuracy) < 0.04
    # Misses go to a product of the query's category whenever one was shown.
    assert np.mean([clicked // 4 == t // 4 for clicked, t in pairs]) > 0.97


def test_progress_and_many_categories() -> None:
    calls: list[tuple[int, int]] = []
    cfg = SMALL.model_copy(update={"categories": 1, "products_per_category": 2, "image_size": 32})
    generate_synthetic(cfg, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    products = _products(SyntheticConfig(categories=40, products_per_category=2))
    assert len({p.category for p in products}) == 40
    assert len({p.style.brand for p in products}) == len(products)
