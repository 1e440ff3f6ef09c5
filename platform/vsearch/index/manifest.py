"""The index manifest: which shards make up an index version, and their files' checksums.

The storage layer writes each shard's files and this manifest as JSON next to them; on load it
reads the manifest, fetches each shard's files and calls :func:`verify` before deserialising.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

#: What a shard holds: catalogue images (what searches return), or the labelled reference
#: photos that only the category vote searches (``category.vote_gallery: reference``).
Role = Literal["catalog", "reference"]
CATALOG: Role = "catalog"
REFERENCE: Role = "reference"


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data`` (64 characters)."""
    return hashlib.sha256(data).hexdigest()


class ShardEntry(BaseModel):
    """One shard: its name, the (category, bucket) it holds, its row count, ``files``: file
    name -> SHA-256 hex of that file's bytes, its Hamming ``engine`` (a FAISS binary factory
    string, "BFlat" or "BIVF<nlist>") and its search parameters: the ``shortlist`` (and, for
    "BIVF", ``nprobe``) tuned at build time and the recall@``recall_k`` it measured on ``probes``
    probe queries against exact search, for ``recall_target`` (None / 0 when not tuned)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    category: str
    bucket: int = Field(ge=0)
    count: int = Field(ge=0)
    files: dict[str, str]
    engine: str = "BFlat"
    shortlist: int | None = Field(None, ge=1)
    nprobe: int | None = Field(None, ge=1)
    recall: float | None = Field(None, ge=0, le=1)
    recall_k: int | None = Field(None, ge=1)
    recall_target: float | None = Field(None, gt=0, le=1)
    probes: int = Field(0, ge=0)
    #: The version whose folder holds the files (a delta version shares its base's shards);
    #: None: this version's own folder.
    location: str | None = None
    #: Rows deleted or replaced by delta updates since the shard was built (tombstones).
    deleted_rows: list[int] = Field(default_factory=list)
    #: A delta segment: rows added since the last full reindex, searched beside the base shard
    #: of the same (category, bucket).
    delta: bool = False
    #: Catalogue images, or labelled reference photos (searched by the category vote only).
    role: Role = CATALOG

    def folder(self, version: str) -> str:
        """The version folder that holds this shard's files, for a manifest of ``version``."""
        return self.location or version

    @field_validator("files")
    @classmethod
    def _check_digests(cls, files: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name, digest in files.items() if not _SHA256_HEX.match(digest))
        if bad:
            raise ValueError(f"files {bad} do not have lower-case sha256 hex digests")
        return files


class TextEntry(BaseModel):
    """The version's text channel (``vsearch.index.text``): its file, that file's SHA-256, the
    text model and its dimension, the products it holds, and (for a delta version that kept it
    unchanged) the version folder that holds it."""

    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    model: str
    dim: int = Field(gt=0)
    products: int = Field(ge=0)
    location: str | None = None

    def folder(self, version: str) -> str:
        return self.location or version


class Manifest(BaseModel):
    """An index version: embedding ``dim``, the model that produced it, its shards and stats.

    ``created_at`` is an ISO-8601 timestamp string; ``stats`` holds free-form numbers
    (e.g. ``{"rows": 123, "build_seconds": 4.5}``).
    """

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    model_version: str
    created_at: str
    dim: int = Field(gt=0)
    shards: list[ShardEntry]
    stats: dict[str, int | float] = Field(default_factory=dict)
    #: For a delta version (``vsearch index add|delete|update``): the version it changed.
    base_version: str | None = None
    #: Product titles embedded for hybrid (photo + text) queries; None: no text channel.
    text: TextEntry | None = None

    @property
    def referenced_versions(self) -> set[str]:
        """Version folders whose files this version reads (its own included)."""
        text = {self.text.folder(self.version)} if self.text is not None else set()
        return {s.folder(self.version) for s in self.shards} | {self.version} | text

    @model_validator(mode="after")
    def _unique_shard_names(self) -> Manifest:
        names = [s.name for s in self.shards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate shard names {dupes}")
        return self

    @property
    def catalog_shards(self) -> list[ShardEntry]:
        """The shards of catalogue images (reference photos left out)."""
        return [s for s in self.shards if s.role == CATALOG]

    @property
    def categories(self) -> list[str]:
        """Sorted distinct categories of the catalogue shards."""
        return sorted({s.category for s in self.catalog_shards})

    @property
    def total_count(self) -> int:
        """Catalogue images searchable over all shards (tombstoned rows not counted)."""
        return sum(s.count - len(s.deleted_rows) for s in self.catalog_shards)

    @property
    def reference_count(self) -> int:
        """Labelled reference photos held for the category vote (0: it votes with the
        catalogue)."""
        return sum(s.count for s in self.shards if s.role == REFERENCE)

    def shards_for(self, category: str) -> list[ShardEntry]:
        """The catalogue shards holding ``category`` (empty when none)."""
        return [s for s in self.catalog_shards if s.category == category]

    def to_json(self) -> str:
        """Serialise to a JSON string (indented, stable key order)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate a manifest; pydantic ``ValidationError`` (a ``ValueError``) if bad."""
        return cls.model_validate_json(text)


def verify(entry: ShardEntry, files: dict[str, bytes], skip: Collection[str] = ()) -> None:
    """Check ``files`` against ``entry``'s checksums.

    Raises ``ValueError`` naming the shard and the first file (in name order) that is missing or
    whose SHA-256 differs. Files not listed in ``entry`` are ignored, and so are those in
    ``skip`` (checked elsewhere, e.g. streamed from disk).
    """
    for fname in sorted(set(entry.files) - set(skip)):
        if fname not in files:
            raise ValueError(f"shard {entry.name!r}: file {fname!r} is missing")
        actual = sha256_hex(files[fname])
        if actual != entry.files[fname]:
            raise ValueError(
                f"shard {entry.name!r}: checksum mismatch for file {fname!r} "
                f"(expected {entry.files[fname]}, got {actual})"
            )
