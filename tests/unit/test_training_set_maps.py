"""Training rows (one per image and view) and the readers that attach their inputs: the same
code feeds the streamed Ray Train datasets and the in-process ``load_training_set``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pytest

from jobs.common import dataset_prefix, ensure_dataset
from vsearch.config import Config
from vsearch.models.miners import PKBatchSampler
from vsearch.runtime.training_data import (
    MapRowReader,
    _numpy_batch,
    load_training_set,
    training_rows,
)
from vsearch.storage import Storage, read_dataset
from vsearch.storage.feature_cache import FeatureCache, content_key, view_key
from vsearch.training.dataset import from_streamed_rows, split_by_source


def _streamed_batch(table, cache: FeatureCache, read: MapRowReader) -> dict:
    """What a Ray Data read task hands a worker: the rows with the parts located and the maps
    attached."""
    batch = _numpy_batch(table)
    located = cache.locate(batch["key"])
    batch["part"] = np.asarray([located[k] for k in batch["key"]], dtype=object)
    return read(batch)


@pytest.fixture
def cached(tiny_config: Config):
    cfg = tiny_config.model_copy(
        update={"model": tiny_config.model.model_copy(update={"views": [1.0, 0.5]})}
    )
    ensure_dataset(cfg)
    storage = Storage(cfg.storage)
    ds = read_dataset(storage, dataset_prefix(cfg))
    train = ds.queries_of("train")
    uris = ds.catalog["image_uri"].to_pylist() + train["image_uri"].to_pylist()
    keys = {u: content_key(storage.read_bytes(u)) for u in uris}
    sizes = {u: (64, 64) for u in uris}  # the tiny catalogue draws 64 px images
    cache = FeatureCache(storage, "test-backbone")
    rng = np.random.default_rng(0)
    unique = sorted(set(keys.values()))
    for v in cfg.model.views:
        cache.write([view_key(k, v) for k in unique], rng.normal(size=(len(unique), 4, 2, 2)))
    return cfg, ds, train, keys, sizes, cache


def test_every_view_is_a_row_and_boxes_stay_on_the_first(cached) -> None:
    cfg, ds, train, keys, sizes, _ = cached
    data = load_training_set(cfg, dataset_prefix(cfg), keys, "test-backbone", sizes)
    c, p = ds.catalog.num_rows, train.num_rows
    assert data.kind == "maps" and len(data) == 2 * (c + p)
    assert data.inputs.shape == (2 * (c + p), 4, 2, 2) and data.inputs.dtype.is_floating_point
    known = ~np.isnan(data.boxes).any(axis=1)
    assert known.sum() == p  # the first view of each photo; a crop would move the box
    assert (data.boxes[known] >= 0).all() and (data.boxes[known] <= 1).all()
    # Each product's catalogue row carries that product's label and no box.
    rows = data.catalog_rows[data.catalog_rows >= 0]
    assert len(rows) == c
    np.testing.assert_array_equal(data.labels[rows], np.flatnonzero(data.catalog_rows >= 0))
    assert not known[rows].any()
    # Click triplets: the anchor is a first-view photo, the others catalogue images.
    if len(data.click_triplets):
        assert known[data.click_triplets[:, 0]].all()
        assert set(data.click_triplets[:, 1:].reshape(-1).tolist()) <= set(rows.tolist())


def test_the_reader_attaches_each_rows_cached_map_and_flags_missing_ones(cached) -> None:
    cfg, ds, train, keys, sizes, cache = cached
    _, photos = training_rows(ds.catalog, train, cfg.model.views, keys, sizes)
    located = cache.locate(photos["key"].to_pylist())
    batch = _numpy_batch(photos)
    batch["part"] = np.asarray([located[k] for k in batch["key"]], dtype=object)
    batch["part"][0] = ""  # as if the cache had lost this map
    out = MapRowReader(cfg.storage, {}, "test-backbone")(batch)
    stored = cache.read(batch["key"][1:])
    for key, got in zip(batch["key"][1:], out["input"][1:], strict=True):
        np.testing.assert_array_equal(got, stored[key])
    assert out["error"][0].startswith("missing") and not any(out["error"][1:])


def test_a_worker_holds_its_share_of_the_photos_and_the_whole_catalogue(cached) -> None:
    cfg, ds, train, keys, sizes, cache = cached
    catalog, photos = training_rows(ds.catalog, train, cfg.model.views, keys, sizes)
    read = MapRowReader(cfg.storage, {}, "test-backbone")

    def batch_of(table):
        return _streamed_batch(table, cache, read)

    shards = split_by_source(photos, 2)
    sets = [from_streamed_rows([batch_of(catalog)], [batch_of(s)], None, "maps") for s in shards]
    assert [len(s) for s in sets] == [catalog.num_rows + s.num_rows for s in shards]
    for data in sets:
        assert (data.catalog_rows >= 0).all()  # every product can pair a photo with its image
        # Batches draw only the products this worker has photos of; the others' catalogue
        # images are never drawn as items of their own.
        drawn = data.sampling_labels()
        local = set(data.labels[~data.from_catalog].tolist())
        assert set(drawn[drawn >= 0].tolist()) == local
        assert (drawn[data.from_catalog & ~np.isin(data.labels, list(local))] == -1).all()
        batch = next(iter(PKBatchSampler(drawn, 2, 2).epoch(0)))
        assert set(data.labels[batch].tolist()) <= local


def test_the_photos_are_dealt_to_workers_by_source_image(cached) -> None:
    cfg, ds, train, keys, sizes, _ = cached
    _, photos = training_rows(ds.catalog, train, cfg.model.views, keys, sizes)
    for world in (1, 2, 3):
        shards = split_by_source(photos, world)
        assert len(shards) == world
        sources = [set(s["source_uri"].to_pylist()) for s in shards]
        # Disjoint, complete, every view of an image on one worker, shares within one image.
        assert sum(s.num_rows for s in shards) == photos.num_rows
        assert set().union(*sources) == set(photos["source_uri"].to_pylist())
        assert sum(len(s) for s in sources) == len(set().union(*sources))
        assert max(map(len, sources)) - min(map(len, sources)) <= 1
        # Each shard keeps the rows' order, and the split is a function of the rows alone.
        for shard in shards:
            where = {u: i for i, u in enumerate(photos["image_uri"].to_pylist())}
            positions = [where[u] for u in shard["image_uri"].to_pylist()]
            assert positions == sorted(positions)
        again = split_by_source(photos, world)
        assert [s["image_uri"] for s in shards] == [s["image_uri"] for s in again]
        # ... of the set of rows, not of their order (rows come grouped by cache part, and a
        # map's part depends on which task computed it).
        shuffled = photos.take(np.random.default_rng(world).permutation(photos.num_rows))
        assert [set(s["image_uri"].to_pylist()) for s in split_by_source(shuffled, world)] == [
            set(s["image_uri"].to_pylist()) for s in shards
        ]
    # Two workers: each holds photos of (nearly) every product, not half the catalogue.
    products = set(photos["product_id"].to_pylist())
    for shard in split_by_source(photos, 2):
        assert len(set(shard["product_id"].to_pylist())) >= 0.8 * len(products)
    with pytest.raises(ValueError, match="0 workers"):
        split_by_source(photos, 0)


def test_a_training_set_does_not_depend_on_the_order_its_rows_arrive_in(cached) -> None:
    cfg, ds, train, keys, sizes, cache = cached
    catalog, photos = training_rows(ds.catalog, train, cfg.model.views, keys, sizes)
    read = MapRowReader(cfg.storage, {}, "test-backbone")
    step = 5
    blocks = [
        _streamed_batch(photos.slice(i, step), cache, read) for i in range(0, photos.num_rows, step)
    ]
    assert len(blocks) > 2
    cat = [_streamed_batch(catalog, cache, read)]
    first = from_streamed_rows(cat, blocks, None, "maps")
    second = from_streamed_rows(cat, blocks[::-1], None, "maps")
    np.testing.assert_array_equal(first.inputs.numpy(), second.inputs.numpy())
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.boxes, second.boxes)
    np.testing.assert_array_equal(first.catalog_rows, second.catalog_rows)


def test_shards_agree_on_labels_even_when_a_product_has_no_catalogue_image(cached) -> None:
    from vsearch.runtime.training_data import vocabularies

    cfg, ds, train, keys, sizes, cache = cached
    catalog, photos = training_rows(ds.catalog, train, cfg.model.views, keys, sizes)
    # The first product loses its catalogue image: its photos then sit on one worker only.
    lost = catalog["product_id"][0].as_py()
    catalog = catalog.filter(pa.compute.not_equal(catalog["product_id"], lost))
    read = MapRowReader(cfg.storage, {}, "test-backbone")

    def batch_of(table):
        return _streamed_batch(table, cache, read)

    mask = pa.compute.equal(photos["product_id"], lost)
    shards = [photos.filter(mask), photos.filter(pa.compute.invert(mask))]
    vocab = vocabularies(catalog, photos)
    sets = [
        from_streamed_rows([batch_of(catalog)], [batch_of(s)], None, "maps", **vocab)
        for s in shards
    ]
    assert sets[0].product_ids == sets[1].product_ids == vocab["product_ids"]
    assert sets[0].category_names == sets[1].category_names == vocab["category_names"]
    assert lost in sets[0].product_ids
