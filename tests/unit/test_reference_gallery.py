"""Reference photos for the category vote (``category.vote_gallery: reference``): shards of
labelled photos that only the vote searches, named, ordered and counted apart from the
catalogue's, staged by the reindex UDF, kept by delta updates, and read by the query pipeline."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vsearch.index.builder import build_shard, build_shards, shard_name
from vsearch.index.manifest import CATALOG, REFERENCE, Manifest
from vsearch.index.searcher import Hit, ShardedIndex
from vsearch.index.staging import stage_groups
from vsearch.rank.pipeline import QueryPipeline, QueryPlan, QueryPolicy
from vsearch.runtime.reindex import reference_rows

NAMES = ["bags", "drinks", "shoes"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _meta(ids: list[str], products: list[str], cats: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table({
        "image_id": ids, "product_id": products, "category": cats, "title": ["t"] * n,
        "quality": pa.array([0.0] * n, pa.float32()), "popularity": pa.array([0.0] * n, pa.float32()),
    })  # fmt: skip


def _index() -> tuple[np.ndarray, ShardedIndex, list]:
    """90 catalogue images over three categories, and five reference photos close to
    catalogue image 0 (a "bags" image) but labelled "shoes"."""
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(90, 32)))
    catalogue = build_shards(
        x,
        _meta([f"i{i}" for i in range(90)], [f"p{i}" for i in range(90)],
              [NAMES[i % 3] for i in range(90)]),
        1, rescore_dtype="float32",
    )  # fmt: skip
    photos = _unit(x[:1] + 0.05 * rng.normal(size=(5, 32)))
    meta = _meta([f"q{i}" for i in range(5)], ["p2"] * 5, ["shoes"] * 5)
    ref = build_shard("shoes", 0, photos, meta, None, rescore_dtype="float32", role=REFERENCE)
    return x, ShardedIndex.from_built([*catalogue, ref]), [*catalogue, ref]


def test_reference_shards_have_their_own_names_and_are_not_catalogue() -> None:
    assert shard_name("shoes", 0, REFERENCE) == "ref-" + shard_name("shoes", 0)
    x, index, built = _index()
    assert index.galleries == {CATALOG, REFERENCE} and index.categories == NAMES
    # Searches read the catalogue unless they ask for the reference photos.
    hits = index.search(x[:1], 20, 64)[0]
    assert hits and all(h.image_id.startswith("i") for h in hits)
    refs = index.search(x[:1], 20, 64, gallery=REFERENCE)[0]
    assert sorted(h.image_id for h in refs) == [f"q{i}" for i in range(5)]
    assert index.search(x[:1], 5, 64, ["bags"], REFERENCE) == [[]]
    # A manifest counts catalogue images apart, orders them first and keeps the role.
    entries = [b.package()[0] for b in built]
    manifest = Manifest(
        version="v", model_version="m", created_at="t", dim=32, shards=entries[::-1]
    )
    assert manifest.total_count == 90 and manifest.reference_count == 5
    assert manifest.categories == NAMES and len(manifest.catalog_shards) == 3
    again = ShardedIndex.of_entries(manifest.shards, [b.index for b in built])
    assert again.galleries == {CATALOG, REFERENCE}
    # A manifest written before roles existed reads as catalogue shards.
    old = manifest.model_dump()
    for shard in old["shards"]:
        del shard["role"]
    assert all(s.role == CATALOG for s in Manifest.model_validate(old).shards)


def test_the_vote_reads_the_reference_photos_and_the_products_come_from_the_catalogue() -> None:
    x, index, _ = _index()
    asked: list[QueryPlan] = []

    def search(vector: np.ndarray, plan: QueryPlan) -> list[list[Hit]]:
        asked.append(plan)
        return [index.search(vector[None], plan.images, plan.shortlist, plan.categories,
                             plan.gallery)[0]]  # fmt: skip

    policy = QueryPolicy(vote_gallery=REFERENCE, fusion_weight=0.0, route_mass=0.5, route_max=1)
    pipe = QueryPipeline(policy)
    pred = {"embedding": x[0], "category_probs": np.array([0.6, 0.2, 0.2]), "box": np.ones(4)}
    answer = pipe.run(pred, NAMES, 3, search, galleries=index.galleries)
    assert [p.gallery for p in asked] == [REFERENCE, CATALOG]
    assert answer.category is not None and answer.category[0] == "shoes"  # the photos' label
    assert answer.plan.categories == ["shoes"]
    assert answer.products and all(p.image_id.startswith("i") for p in answer.products)
    # An index without reference photos: the catalogue votes (image 0 is a "bags" image).
    asked.clear()
    answer = pipe.run(pred, NAMES, 3, search)
    assert asked[0].gallery == CATALOG and answer.category is not None
    assert answer.category[0] == "bags"
    assert pipe.vote_gallery({CATALOG}) == CATALOG
    assert pipe.vote_gallery({CATALOG, REFERENCE}) == REFERENCE


def test_reference_rows_take_the_labelled_photos_of_one_split() -> None:
    batch = {
        "query_id": np.array(["a", "b", "c"], dtype=object),
        "product_id": np.array(["p1", "p2", "p3"], dtype=object),
        "image_uri": np.array(["a.jpg", "b.jpg", "c.jpg"], dtype=object),
        "category": np.array(["x", "y", "x"], dtype=object),
        "split": np.array(["train", "val", "train"], dtype=object),
    }
    rows = reference_rows(batch, "train")
    assert rows["image_id"].tolist() == ["a", "c"] and rows["role"].tolist() == [REFERENCE] * 2
    assert rows["image_uri"].tolist() == ["a.jpg", "c.jpg"] and rows["quality"].dtype == np.float32
    assert len(reference_rows(batch, "test")["image_id"]) == 0
    # Staged under the reference shards' names.
    meta = _meta(["a", "c"], ["p1", "p3"], ["x", "x"])
    groups = stage_groups(np.eye(2, 4, dtype=np.float32), meta, 1, REFERENCE)
    assert list(groups) == [shard_name("x", 0, REFERENCE)]


def test_a_delta_update_keeps_the_reference_photos(tmp_path) -> None:
    from vsearch.index.delta import plan_delta
    from vsearch.index.shard import ShardIndex

    x, _, built = _index()
    entries = {b.name: b for b in built}
    manifest = Manifest(
        version="v", model_version="m", created_at="t", dim=32,
        shards=[b.package()[0] for b in built],
    )  # fmt: skip

    def load(entry) -> ShardIndex:
        return entries[entry.name].index

    def read_meta(entry) -> pa.Table:
        return entries[entry.name].index.meta

    # "q0" is a reference photo's id: deleting it is a catalogue id that does not exist.
    plan = plan_delta(manifest, read_meta, load, x[:0], _meta([], [], []), ["i0", "q0"], 1, None)
    kept = {e.name: e for e in plan.entries}
    ref = kept[shard_name("shoes", 0, REFERENCE)]
    assert ref.role == REFERENCE and ref.deleted_rows == [] and ref.location == "v"
    assert plan.deleted == 1 and plan.not_found == ["q0"]


@pytest.mark.parametrize("gallery", [CATALOG, REFERENCE])
def test_a_plan_names_its_gallery(gallery: str) -> None:
    pipe = QueryPipeline(QueryPolicy(vote_gallery=gallery))
    assert pipe.vote_plan({CATALOG, REFERENCE}).gallery == gallery
    assert pipe.plan(np.array([1.0, 0, 0]), NAMES, 3).gallery == CATALOG
