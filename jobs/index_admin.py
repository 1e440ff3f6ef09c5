"""``vsearch index list | publish VERSION | rollback | gc --keep N | add ROWS | update ROWS |
delete IDS``: the index versions on storage, and changes between full reindexes.

Every reindex writes a version folder and publishes it by moving ``indexes/CURRENT``; these
commands show the versions, serve an earlier one again (verified file by file first), or delete old
ones. ``add``, ``update`` and ``delete`` publish a cheap delta version that shares the base
shards (``vsearch.index.delta``). A running service picks up a changed pointer when it reloads.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa

from jobs.common import dataset_prefix, print_summary, progress, storage_of, text_channel
from vsearch.config import Config
from vsearch.index.delta import plan_delta
from vsearch.index.manifest import Manifest
from vsearch.index.shard import META_COLUMNS
from vsearch.index.tuning import tuning_spec
from vsearch.runtime.embedding import ImageBatchEmbedder
from vsearch.schema import CATALOG_SCHEMA, conform
from vsearch.storage import IndexStore, Storage
from vsearch.storage.artifacts import new_version


def _store(cfg: Config) -> IndexStore:
    return IndexStore(storage_of(cfg))


def list_versions(cfg: Config) -> list[dict[str, object]]:
    """Print one line per version (oldest first) and return the rows."""
    rows = _store(cfg).versions()
    if not rows:
        print(f"no index versions under {storage_of(cfg).url('indexes')}")
        return rows
    print(f"{'':2}{'version':<24}{'model':<24}{'shards':>7}{'vectors':>10}  created / state")
    for row in rows:
        mark = "* " if row["current"] else "  "
        if "error" in row:
            state = f"DAMAGED: {row['error']}"
        elif row["complete"]:
            state = str(row["created_at"])
        else:
            state = "unfinished (no manifest)"
        print(
            f"{mark}{row['version']!s:<24}{row.get('model_version', '-')!s:<24}"
            f"{row.get('shards', '-')!s:>7}{row.get('vectors', '-')!s:>10}  {state}"
        )
    print("(* published)")
    return rows


def publish(cfg: Config, version: str) -> None:
    manifest = _store(cfg).publish_version(version)
    print(f"published {manifest.version} (model {manifest.model_version}, verified)")


def rollback(cfg: Config) -> None:
    store = _store(cfg)
    before = store.current()
    manifest = store.rollback()
    print(f"rolled back: {before} -> {manifest.version} (verified)")


def gc(cfg: Config, keep: int) -> list[str]:
    deleted = _store(cfg).gc(keep)
    print(f"deleted {len(deleted)} version(s)" + (f": {', '.join(deleted)}" if deleted else ""))
    return deleted


# -- updates between full reindexes ------------------------------------------------------------


def _url(path: str) -> str:
    """A path or URL as an absolute URL (local paths made absolute, ``file://``)."""
    return path if "://" in path else f"file://{os.path.abspath(path)}"


def _read_rows(storage: Storage, path: str) -> tuple[pa.Table, int]:
    """Catalogue rows to add or update, as ``CATALOG_SCHEMA`` with absolute image URLs (relative
    ones are taken relative to the file's folder; ``attributes`` may be left out), and how many
    malformed rows (a missing id, category or image) were skipped."""
    url = _url(path)
    table = storage.read_table(url)
    if "attributes" not in table.column_names:
        table = table.append_column("attributes", pa.array(["{}"] * table.num_rows, pa.string()))
    missing = [f.name for f in CATALOG_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{url} is missing columns {missing}; catalogue rows need "
                         f"{CATALOG_SCHEMA.names}")  # fmt: skip
    ok = np.ones(table.num_rows, dtype=bool)
    for name in ("image_id", "product_id", "image_uri", "category"):
        values = table.column(name).to_pylist()
        ok &= np.asarray([v is not None and str(v) != "" for v in values], dtype=bool)
    table = table.filter(pa.array(ok))
    folder = url.rsplit("/", 1)[0]
    uris = [
        u if "://" in u else (f"file://{u}" if u.startswith("/") else f"{folder}/{u}")
        for u in table.column("image_uri").to_pylist()
    ]
    table = table.set_column(
        table.schema.get_field_index("image_uri"), "image_uri", pa.array(uris, pa.string())
    )
    return conform(table, CATALOG_SCHEMA), int((~ok).sum())


def _read_ids(storage: Storage, path: str) -> list[str]:
    """Image ids to delete: a Parquet file's ``image_id`` column, or a text file, one per line."""
    url = _url(path)
    if url.endswith(".parquet"):
        table = storage.read_table(url)
        if "image_id" not in table.column_names:
            raise ValueError(f"{url} has no image_id column")
        return [str(i) for i in table.column("image_id").to_pylist() if i is not None]
    return [line.strip() for line in storage.read_text(url).splitlines() if line.strip()]


def _embed(cfg: Config, model_version: str, rows: pa.Table) -> tuple[np.ndarray, dict[str, str]]:
    """Embed the rows' images with the model that built the index; per skipped image id, why."""
    embedder = ImageBatchEmbedder(
        cfg.storage, cfg.storage_options, model_version, "", cfg.index.max_pixels
    )
    uris = rows.column("image_uri").to_pylist()
    ids = rows.column("image_id").to_pylist()
    parts, errors = [], {}
    step = cfg.index.batch_size
    with progress(len(uris), "embedding", "img") as bar:
        for start in range(0, len(uris), step):
            batch, errs = embedder.embed_uris(uris[start : start + step])
            parts.append(batch)
            for image_id, err in zip(ids[start : start + step], errs, strict=True):
                if err:
                    errors[str(image_id)] = err
            bar.update(len(batch))
    return np.concatenate(parts), errors


def change(
    cfg: Config, rows_file: str | None = None, ids_file: str | None = None, replace: bool = False
) -> Manifest:
    """``vsearch index add|update ROWS`` / ``delete IDS``: publish a delta version of the served
    index (``vsearch.index.delta``) and apply the same change to the dataset's catalogue table,
    so that the next full reindex keeps it. ``add`` refuses ids the index already holds
    (``replace`` False); ``update`` replaces them. Nothing is published or changed on storage
    when a check fails."""
    started = time.perf_counter()
    storage = storage_of(cfg)
    store = IndexStore(storage)
    base = store.manifest()
    rows, malformed = (
        _read_rows(storage, rows_file) if rows_file else (CATALOG_SCHEMA.empty_table(), 0)
    )
    delete_ids = _read_ids(storage, ids_file) if ids_file else []
    vectors, errors = np.zeros((0, base.dim), np.float32), {}
    if rows.num_rows:
        vectors, errors = _embed(cfg, base.model_version, rows)
        ok = np.asarray([str(i) not in errors for i in rows.column("image_id").to_pylist()])
        rows, vectors = rows.filter(pa.array(ok)), vectors[ok]
    plan = plan_delta(
        base,
        lambda e: store.read_meta(base, e),
        lambda e: store.load_shards(base, [e.name])[0],
        vectors,
        rows.select(list(META_COLUMNS)),
        delete_ids,
        cfg.index.buckets_per_category,
        tuning_spec(cfg.index),
        cfg.index.rescore_dtype,
    )
    if plan.replaced and not replace:
        raise ValueError(
            f"{plan.replaced} of the rows are already indexed; use `vsearch index update` to "
            "replace them"
        )
    stats = {"added": plan.added, "replaced": plan.replaced, "deleted": plan.deleted,
             "skipped": len(errors) + malformed}  # fmt: skip
    catalogue = _changed_catalogue(cfg, rows, set(delete_ids))
    manifest = store.write_delta(new_version("i"), base, plan, stats)
    if catalogue is not None and cfg.index.text_channel:
        # Titles of new or renamed products embedded; the others' vectors re-used.
        texts = text_channel(cfg, catalogue, base=store.load_text(base))
        if texts is not None:
            manifest = manifest.model_copy(
                update={"text": store.write_text(manifest.version, texts)}
            )
    elif base.text is not None:  # no catalogue table to read titles from: keep the base's
        kept = base.text.model_copy(update={"location": base.text.folder(base.version)})
        manifest = manifest.model_copy(update={"text": kept})
    store.write_manifest(manifest)
    if catalogue is not None:
        storage.write_table(f"{dataset_prefix(cfg)}/catalog.parquet", catalogue)
    store.publish(manifest)
    print_summary(
        "index change",
        {
            "index version (published)": f"{manifest.version} (over {base.version})",
            "images added": plan.added,
            "images replaced": plan.replaced,
            "images deleted": plan.deleted,
            "ids to delete not found": len(plan.not_found),
            "rows skipped (malformed)": malformed,
            "images skipped (unreadable)": len(errors),
            "delta segments": len(plan.deltas),
            "searchable images": manifest.total_count,
            "seconds": time.perf_counter() - started,
        },
    )
    for image_id, err in list(errors.items())[:5]:
        print(f"  skipped {image_id}: {err}")
    return manifest


def _changed_catalogue(cfg: Config, rows: pa.Table, deleted: set[str]) -> pa.Table | None:
    """``datasets/<source>/catalog.parquet`` with the change applied (rows of deleted or
    replaced ids out, the new rows in), or None when there is no such table."""
    storage = storage_of(cfg)
    name = f"{dataset_prefix(cfg)}/catalog.parquet"
    if not storage.exists(name):
        return None
    catalogue = storage.read_table(name)
    drop = deleted | {str(i) for i in rows.column("image_id").to_pylist()}
    keep = [str(i) not in drop for i in catalogue.column("image_id").to_pylist()]
    catalogue = conform(catalogue.filter(pa.array(keep, pa.bool_())), CATALOG_SCHEMA)
    return pa.concat_tables([catalogue, rows])
