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
from vsearch.training.dataset import from_streamed_rows


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

    half = photos.num_rows // 2
    shards = [photos.slice(0, half), photos.slice(half)]
    sets = [from_streamed_rows([batch_of(catalog)], [batch_of(s)], None, "maps") for s in shards]
    assert [len(s) for s in sets] == [
        catalog.num_rows + half,
        catalog.num_rows + photos.num_rows - half,
    ]
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
