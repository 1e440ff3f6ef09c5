"""``vsearch index add | update | delete``: a delta version is published over the served index,
the change is searchable at once and the dataset's catalogue carries it for the next reindex.

The base index is built in-process (the tiny dataset, the untrained tiny network) so the test
needs no Ray; the commands themselves never start Ray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import index_admin
from jobs.common import dataset_prefix, ensure_dataset
from vsearch.config import Config
from vsearch.index import ShardedIndex, build_shards
from vsearch.index.tuning import tuning_spec
from vsearch.models.artifact import initial_artifact
from vsearch.runtime.embedding import META_COLUMNS, ImageBatchEmbedder
from vsearch.storage import IndexStore, ModelStore, Storage, read_dataset


def _serving(cfg: Config) -> tuple[IndexStore, ShardedIndex]:
    store = IndexStore(Storage(cfg.storage))
    shards = store.load_shards(store.manifest())
    return store, ShardedIndex((s.name, s) for s in shards)


def test_add_update_delete_publish_delta_versions(tiny_config: Config, tmp_path: Path) -> None:
    cfg = tiny_config
    storage = Storage(cfg.storage)
    prefix = ensure_dataset(cfg)
    catalogue = read_dataset(storage, prefix).catalog
    model = ModelStore(storage).save(
        initial_artifact(cfg.model, sorted(set(catalogue.column("category").to_pylist())))
    )
    embedder = ImageBatchEmbedder(cfg.storage, {}, model, "", cfg.index.max_pixels)
    vectors, errors = embedder.embed_uris(catalogue.column("image_uri").to_pylist())
    assert not any(errors)
    store = IndexStore(storage)
    built = build_shards(vectors, catalogue.select(list(META_COLUMNS)), 1, tuning_spec(cfg.index))
    store.publish(store.write_version("i-base", built, model, vectors.shape[1], {}))

    # Two catalogue images listed again under new ids (a relative URI, resolved against the
    # file's folder), one unreadable image and one malformed row.
    rows = catalogue.slice(0, 2).to_pylist()
    images = tmp_path / "new"
    images.mkdir()
    for i, row in enumerate(rows):
        (images / f"{i}.png").write_bytes(storage.read_bytes(row["image_uri"]))
        row.update(image_id=f"new-{i}", product_id=f"new-product-{i}", image_uri=f"new/{i}.png")
    broken = {**rows[0], "image_id": "new-broken", "image_uri": "new/broken.png"}
    (images / "broken.png").write_bytes(b"not an image")
    malformed = {**rows[0], "image_id": None}
    add_file = tmp_path / "add.parquet"
    pq.write_table(pa.Table.from_pylist([*rows, broken, malformed]), add_file)

    added = index_admin.change(cfg, rows_file=str(add_file))
    assert added.base_version == "i-base" and store.current() == added.version
    assert added.stats == {"added": 2, "replaced": 0, "deleted": 0, "skipped": 2}
    assert added.total_count == catalogue.num_rows + 2
    # The new products' titles are in the version's text channel (hybrid queries).
    texts = store.load_text(added)
    assert texts is not None and {"new-product-0", "new-product-1"} <= set(texts.product_ids)
    _, index = _serving(cfg)
    hits = index.search(vectors[:2], 3)
    # Each new id has the same image as the row it copies: both come back, tied at the top.
    for i, row_hits in enumerate(hits):
        top = {h.image_id for h in row_hits[:2]}
        assert top == {catalogue.column("image_id")[i].as_py(), f"new-{i}"}

    # Adding an id again is refused (nothing published); updating it replaces it.
    with pytest.raises(ValueError, match="index update"):
        index_admin.change(cfg, rows_file=str(add_file))
    assert store.current() == added.version
    updated = index_admin.change(cfg, rows_file=str(add_file), replace=True)
    assert updated.stats["replaced"] == 2 and updated.total_count == added.total_count

    # Delete a base image and a new one (a text file of ids, with an unknown id).
    gone = catalogue.column("image_id")[5].as_py()
    ids_file = tmp_path / "gone.txt"
    ids_file.write_text(f"{gone}\nnew-1\nno-such-image\n")
    deleted = index_admin.change(cfg, ids_file=str(ids_file))
    assert deleted.stats["deleted"] == 2 and deleted.total_count == catalogue.num_rows
    _, index = _serving(cfg)
    returned = {h.image_id for row in index.search(vectors, 10) for h in row}
    assert gone not in returned and "new-1" not in returned and "new-0" in returned
    texts = store.load_text(deleted)
    assert "new-product-1" not in texts.product_ids and "new-product-0" in texts.product_ids

    # The dataset's catalogue carries every change, so the next full reindex keeps them.
    ids = set(storage.read_table(f"{dataset_prefix(cfg)}/catalog.parquet")["image_id"].to_pylist())
    assert "new-0" in ids and "new-1" not in ids and gone not in ids and "new-broken" not in ids
    assert len(ids) == catalogue.num_rows
    # The delta versions share the base shards: gc keeps the base folder they read.
    store.gc(keep=1)
    assert {"i-base", deleted.version} <= {v["version"] for v in store.versions()}
    assert np.isfinite(_serving(cfg)[1].search(vectors[:1], 1)[0][0].score)
