"""``vsearch index list | publish VERSION | rollback | gc --keep N``: the index versions on storage.

Every reindex writes a version folder and publishes it by moving ``indexes/CURRENT``; these
commands show the versions, serve an earlier one again (verified file by file first), or delete old
ones. A running service picks up a changed pointer when it reloads.
"""

from __future__ import annotations

from jobs.common import storage_of
from vsearch.config import Config
from vsearch.storage import IndexStore


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
