"""Datasets on storage: a folder of Parquet tables plus the images they reference."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping

import pyarrow as pa

from vsearch.config import Config
from vsearch.data.dataset import CatalogDataset
from vsearch.storage.fs import Storage

_TABLES = ("catalog", "queries", "clicks", "duplicates")


def dataset_prefix(cfg: Config) -> str:
    """Where the configured dataset lives under the storage root: ``datasets/<source>``."""
    return f"datasets/{cfg.data.source}"


def write_dataset(
    storage: Storage,
    prefix: str,
    dataset: CatalogDataset,
    images: Mapping[str, bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``dataset``'s tables as ``<prefix>/<table>.parquet`` and ``images`` (relative URI ->
    bytes) under ``<prefix>/``. The catalogue table is written last, so a reader never sees a
    catalogue whose images are missing."""
    items = list((images or {}).items())
    for i, (uri, data) in enumerate(items):
        storage.write_bytes(posixpath.join(prefix, uri), data)
        if progress is not None:
            progress(i + 1, len(items))
    for name in reversed(_TABLES):
        table = getattr(dataset, name)
        if table is not None:
            storage.write_table(posixpath.join(prefix, f"{name}.parquet"), table)


def resolve_uri(storage: Storage, prefix: str, uri: str) -> str:
    """The absolute URL of an image URI found in the dataset at ``prefix``.

    Absolute URLs stay as they are, absolute paths become ``file://`` URLs, and relative paths are
    taken relative to the dataset folder.
    """
    if "://" in uri:
        return uri
    if uri.startswith("/"):
        return f"file://{uri}"
    return storage.url(posixpath.join(prefix, uri))


def _absolute(storage: Storage, prefix: str, uris: pa.ChunkedArray) -> pa.Array:
    return pa.array([resolve_uri(storage, prefix, u) for u in uris.to_pylist()], pa.string())


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def read_dataset(storage: Storage, prefix: str) -> CatalogDataset:
    """Read a dataset written by ``write_dataset``, with every image URI made an absolute URL."""
    if not storage.exists(posixpath.join(prefix, "catalog.parquet")):
        raise FileNotFoundError(
            f"no dataset at {storage.url(prefix)}: catalog.parquet is missing "
            "(run `vsearch generate` or point data.source at an existing dataset)"
        )
    tables: dict[str, pa.Table | None] = {}
    for name in _TABLES:
        path = posixpath.join(prefix, f"{name}.parquet")
        tables[name] = storage.read_table(path) if storage.exists(path) else None
    catalog = tables["catalog"]
    queries = tables["queries"]
    assert catalog is not None
    if queries is None:
        raise FileNotFoundError(f"{storage.url(prefix)} has a catalogue but no queries.parquet")
    catalog = _with_column(catalog, "image_uri", _absolute(storage, prefix, catalog["image_uri"]))
    queries = _with_column(queries, "image_uri", _absolute(storage, prefix, queries["image_uri"]))
    clicks = tables["clicks"]
    if clicks is not None:
        clicks = _with_column(
            clicks, "query_image_uri", _absolute(storage, prefix, clicks["query_image_uri"])
        )
    return CatalogDataset(catalog, queries, clicks, tables["duplicates"])
