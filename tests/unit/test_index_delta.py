"""Delta updates: added rows searchable from a delta segment, deletes and replacements hidden by
tombstones, base shards shared between versions and kept by gc while a version reads them."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from vsearch.index import ShardedIndex, build_shards, l2_normalise
from vsearch.index.delta import plan_delta
from vsearch.index.tuning import TuningSpec
from vsearch.storage import IndexStore, Storage

faiss.omp_set_num_threads(1)
SPEC = TuningSpec(probes=30)


def _meta(ids: list[str], cats: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "image_id": ids,
            "product_id": [f"p-{i}" for i in ids],
            "category": cats,
            "title": [f"t {i}" for i in ids],
            "quality": pa.array(np.ones(n, np.float32)),
            "popularity": pa.array(np.zeros(n, np.float32)),
        }
    )


def _vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    return l2_normalise(rng.standard_normal((n, 32)).astype(np.float32))


def _change(store: IndexStore, version: str, add: tuple[np.ndarray, pa.Table] | None,
            delete: list[str]):  # fmt: skip
    base = store.manifest()
    vectors, meta = add if add is not None else (np.zeros((0, 32), np.float32), _meta([], []))
    plan = plan_delta(
        base,
        lambda e: store.read_meta(base, e),
        lambda e: store.load_shards(base, [e.name])[0],
        vectors,
        meta,
        delete,
        buckets_per_category=2,
        tuning=SPEC,
    )
    manifest = store.write_delta(version, base, plan, {"added": plan.added})
    store.publish(manifest)
    return plan, manifest


def _top(store: IndexStore, q: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
    index = ShardedIndex(
        (s.name.rsplit("-b", 1)[0], s) for s in store.load_shards(store.manifest())
    )
    return [[(h.image_id, h.score) for h in row] for row in index.search(q, k)]


def test_add_delete_update_are_searchable_before_the_next_reindex(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base_x = _vectors(rng, 200)
    ids = [f"img-{i:03d}" for i in range(200)]
    cats = ["a" if i % 2 else "b" for i in range(200)]
    store = IndexStore(Storage(str(tmp_path)))
    store.publish(store.write_version("v1", build_shards(base_x, _meta(ids, cats), 2, SPEC),
                                      "m1", 32, {}))  # fmt: skip
    assert store.manifest().total_count == 200

    new_x = _vectors(rng, 6)
    new_ids = [f"new-{i}" for i in range(5)] + ["img-010"]  # the last one replaces a base image
    deleted = ["img-001", "img-002", "img-003", "no-such-id"]
    plan, v2 = _change(store, "v2", (new_x, _meta(new_ids, ["a"] * 6)), deleted)
    assert (plan.added, plan.replaced, plan.deleted, plan.not_found) == (5, 1, 3, ["no-such-id"])
    assert v2.base_version == "v1" and v2.total_count == 200 + 5 - 3
    assert {e.location for e in v2.shards if not e.delta} == {"v1"}
    assert sorted(e.name for e in v2.shards if e.delta) and all(
        (tmp_path / "indexes" / "v2" / "shards" / e.name).is_dir() for e in v2.shards if e.delta
    )
    assert not any((tmp_path / "indexes" / "v2" / "shards").glob("*-b00[01]"))  # base shared

    # Added images are found first; deleted ones are never returned; the replaced id is found
    # by its new vector and its old vector no longer brings it back.
    found = _top(store, np.concatenate([new_x, base_x[[1, 2, 3, 10]]]))
    for i, image_id in enumerate(new_ids):
        assert found[i][0][0] == image_id and found[i][0][1] == pytest.approx(1.0, abs=5e-3)
    returned = {image_id for row in found for image_id, _ in row}
    assert not returned & {"img-001", "img-002", "img-003"}
    old_10 = found[len(new_ids) + 3]
    assert all(score < 0.99 for image_id, score in old_10 if image_id == "img-010")

    # A second change over the delta version: delete an added image and a base one.
    plan3, v3 = _change(store, "v3", None, ["new-0", "img-004"])
    assert (plan3.deleted, v3.total_count) == (2, 200 + 5 - 3 - 2)
    assert {e.location for e in v3.shards if not e.delta} == {"v1"}
    found = _top(store, np.concatenate([new_x[:2], base_x[[4]]]))
    assert found[0][0][0] != "new-0" and found[1][0][0] == "new-1"
    assert "img-004" not in {i for row in found for i, _ in row}

    # gc keeps the base folder that the published delta version reads.
    assert store.gc(keep=1) == ["v2"]
    assert (tmp_path / "indexes" / "v1").is_dir()
    assert _top(store, new_x[1:2])[0][0][0] == "new-1"


def test_a_change_is_refused_when_ids_conflict(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    store = IndexStore(Storage(str(tmp_path)))
    x = _vectors(rng, 20)
    store.publish(store.write_version(
        "v1", build_shards(x, _meta([str(i) for i in range(20)], ["a"] * 20), 2, SPEC), "m", 32, {}
    ))  # fmt: skip
    with pytest.raises(ValueError, match="both added and deleted"):
        _change(store, "v2", (x[:1], _meta(["5"], ["a"])), ["5"])
    with pytest.raises(ValueError, match="repeat"):
        _change(store, "v2", (x[:2], _meta(["x", "x"], ["a", "a"])), [])
    with pytest.raises(ValueError, match="32-d"):
        _change(store, "v2", (x[:1, :16], _meta(["y"], ["a"])), [])
    assert store.current() == "v1"
