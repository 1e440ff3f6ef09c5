"""Training on cached maps: one row per image and view, boxes and click triplets on the first."""

from __future__ import annotations

import numpy as np

from jobs.common import dataset_prefix, ensure_dataset
from vsearch.config import Config
from vsearch.runtime.training import load_training_set
from vsearch.storage import Storage, read_dataset
from vsearch.storage.feature_cache import FeatureCache, content_key, view_key


def test_every_view_is_a_row_and_boxes_stay_on_the_first(tiny_config: Config) -> None:
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
    data = load_training_set(cfg, dataset_prefix(cfg), keys, "test-backbone", sizes)
    n = len(uris)
    assert data.kind == "maps" and len(data) == 2 * n
    assert data.inputs.shape == (2 * n, 4, 2, 2) and data.inputs.dtype.is_floating_point
    # Rows: catalogue (view 1, view 2), then photos (view 1, view 2).
    c, p = ds.catalog.num_rows, train.num_rows
    assert set(data.catalog_rows.tolist()) <= set(range(c))  # first-view catalogue rows
    known = ~np.isnan(data.boxes).any(axis=1)
    assert known[2 * c : 2 * c + p].all() and known.sum() == p  # boxes on first-view photos only
    assert (data.boxes[known] >= 0).all() and (data.boxes[known] <= 1).all()
    first_view = set(range(c)) | set(range(2 * c, 2 * c + p))
    assert set(data.click_triplets.reshape(-1).tolist()) <= first_view
    np.testing.assert_array_equal(data.labels[:c], data.labels[c : 2 * c])
