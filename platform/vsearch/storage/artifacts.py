"""Versioned artifacts on storage: model artifacts and index versions, published atomically.

A version is written completely under its own folder first; only then does a one-line pointer
(``models/LATEST``, ``indexes/CURRENT``) move to it. A job that fails half-way leaves the pointer,
and so what is served, where it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import tempfile
import uuid
from datetime import UTC, datetime
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vsearch.index.builder import BuiltShard
from vsearch.index.delta import DeltaPlan
from vsearch.index.manifest import Manifest, ShardEntry, TextEntry, verify
from vsearch.index.shard import META_FILE, VECTOR_FILES, VECTORS_FILE, ShardIndex, open_rows
from vsearch.index.text import TEXT_FILE, TextChannel
from vsearch.models.artifact import FORMAT as ARTIFACT_FORMAT
from vsearch.models.artifact import ModelArtifact, sha256_hex
from vsearch.models.embedder import Embedder
from vsearch.storage.fs import Storage

#: Bytes read at a time while hashing or copying a rescoring-vector file.
_CHUNK = 1 << 22


def index_cache_dir() -> str:
    """Local folder where searchers keep copies of remote shards' rescoring vectors to
    memory-map them (``VSEARCH_INDEX_CACHE``, default ``<tmp>/vsearch-index-cache``)."""
    return os.environ.get(
        "VSEARCH_INDEX_CACHE", os.path.join(tempfile.gettempdir(), "vsearch-index-cache")
    )


def new_version(prefix: str) -> str:
    """A sortable, unique-enough version name such as ``m20261121T103000123Z``."""
    return prefix + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3] + "Z"


class ModelStore:
    """``models/<version>/model.pt`` + ``info.json``; ``models/LATEST`` names the newest.

    A frozen backbone's bytes are stored once per digest, ``models/backbones/<sha256>.onnx``, and
    shared by the versions trained on it. ``info.json`` records the sha256 of ``model.pt`` and of
    the backbone; ``load`` verifies both and names the file that does not match.
    """

    def __init__(self, storage: Storage, prefix: str = "models") -> None:
        self.storage = storage
        self.prefix = prefix

    def _backbone_name(self, digest: str) -> str:
        return posixpath.join(self.prefix, "backbones", f"{digest}.onnx")

    def save(
        self,
        artifact: ModelArtifact,
        version: str | None = None,
        backbone_bytes: bytes | None = None,
    ) -> str:
        """Write ``artifact`` (and its backbone's bytes, once) as a new version, move ``LATEST``
        to it, return the version."""
        version = version or new_version("m")
        base = posixpath.join(self.prefix, version)
        files: dict[str, str] = {}
        if artifact.backbone_sha256 is not None:
            name = self._backbone_name(artifact.backbone_sha256)
            if not self.storage.exists(name):
                if backbone_bytes is None or sha256_hex(backbone_bytes) != artifact.backbone_sha256:
                    raise ValueError(
                        "save needs the bytes of the backbone the model was trained on"
                    )
                self.storage.write_bytes(name, backbone_bytes)
            files[name] = artifact.backbone_sha256
        weights = artifact.to_bytes()
        files[posixpath.join(base, "model.pt")] = sha256_hex(weights)
        self.storage.write_bytes(posixpath.join(base, "model.pt"), weights)
        info = {
            "version": version,
            "format": ARTIFACT_FORMAT,
            "config": artifact.config.model_dump(),
            "spec": artifact.spec.as_dict(),
            "categories": artifact.categories,
            "sha256": files,
            **artifact.info,
        }
        self.storage.write_text(posixpath.join(base, "info.json"), json.dumps(info, indent=2))
        self.storage.write_text(posixpath.join(self.prefix, "LATEST"), version)
        return version

    def latest(self) -> str:
        pointer = posixpath.join(self.prefix, "LATEST")
        if not self.storage.exists(pointer):
            raise FileNotFoundError(
                f"no model at {self.storage.url(self.prefix)}: run `vsearch train` first"
            )
        return self.storage.read_text(pointer).strip()

    def _verified(self, name: str, digests: dict[str, str]) -> bytes:
        data = self.storage.read_bytes(name)
        want = digests.get(name)
        if want is not None and sha256_hex(data) != want:
            raise ValueError(
                f"{self.storage.url(name)} does not match the sha256 in its info.json "
                "(damaged or replaced): refusing to load it"
            )
        return data

    def load(self, version: str | None = None) -> tuple[str, ModelArtifact]:
        """The artifact of ``version`` (``LATEST`` when None), checksum-verified, and its name."""
        version = version or self.latest()
        base = posixpath.join(self.prefix, version)
        info_name = posixpath.join(base, "info.json")
        digests = (
            json.loads(self.storage.read_text(info_name)).get("sha256", {})
            if self.storage.exists(info_name)
            else {}
        )
        data = self._verified(posixpath.join(base, "model.pt"), digests)
        return version, ModelArtifact.from_bytes(data)

    def backbone_bytes(self, artifact: ModelArtifact) -> bytes | None:
        """The verified bytes of ``artifact``'s frozen backbone (None for torch backbones)."""
        if artifact.backbone_sha256 is None:
            return None
        name = self._backbone_name(artifact.backbone_sha256)
        return self._verified(name, {name: artifact.backbone_sha256})

    def load_embedder(self, version: str | None = None, batch_size: int = 32) -> Embedder:
        """The ready ``Embedder`` of ``version`` (``LATEST`` when None), backbone included."""
        _, artifact = self.load(version)
        return artifact.embedder(self.backbone_bytes(artifact), batch_size)


class IndexStore:
    """``indexes/<version>/manifest.json`` + ``shards/<name>/<file>``; ``indexes/CURRENT`` serves."""

    def __init__(self, storage: Storage, prefix: str = "indexes") -> None:
        self.storage = storage
        self.prefix = prefix

    def write_version(
        self,
        version: str,
        built: list[BuiltShard],
        model_version: str,
        dim: int,
        stats: dict[str, int | float],
    ) -> Manifest:
        """Write every shard's files under ``version`` and return its manifest, not yet published."""
        entries = [self.write_shard(version, shard) for shard in built]
        return self.new_manifest(version, entries, model_version, dim, stats)

    def write_shard(self, version: str, shard: BuiltShard) -> ShardEntry:
        """Write one shard's files under ``version`` (what each parallel build task does) and
        return its manifest entry."""
        entry, files = shard.package()
        for fname, data in files.items():
            self.storage.write_bytes(
                posixpath.join(self.prefix, version, "shards", entry.name, fname), data
            )
        return entry

    @staticmethod
    def new_manifest(
        version: str,
        entries: list[ShardEntry],
        model_version: str,
        dim: int,
        stats: dict[str, int | float],
    ) -> Manifest:
        """The manifest of ``version`` over shards already written (catalogue shards first, in
        (category, bucket) order)."""
        return Manifest(
            version=version,
            model_version=model_version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            dim=dim,
            shards=sorted(entries, key=_shard_order),
            stats=stats,
        )

    def write_delta(
        self, version: str, base: Manifest, plan: DeltaPlan, stats: dict[str, int | float]
    ) -> Manifest:
        """Write a delta version over ``base`` (``vsearch.index.delta.plan_delta``): only its
        delta segments' files go under ``version``; its base entries point at their folders.
        Returns its manifest, not yet published."""
        written = self.write_version(version, plan.deltas, base.model_version, base.dim, stats)
        shards = sorted([*plan.entries, *written.shards], key=_shard_order)
        return written.model_copy(update={"shards": shards, "base_version": base.version})

    def write_text(self, version: str, channel: TextChannel) -> TextEntry:
        """Write the text channel under ``version``; its manifest entry."""
        data = channel.to_bytes()
        self.storage.write_bytes(posixpath.join(self.prefix, version, TEXT_FILE), data)
        return TextEntry(
            file=TEXT_FILE,
            sha256=sha256_hex(data),
            model=channel.model,
            dim=channel.dim,
            products=len(channel.product_ids),
        )

    def load_text(self, manifest: Manifest) -> TextChannel | None:
        """The version's text channel, checksum-verified (``ValueError`` naming the file when it
        is missing or damaged); None when the version has none."""
        entry = manifest.text
        if entry is None:
            return None
        name = posixpath.join(self.prefix, entry.folder(manifest.version), entry.file)
        if not self.storage.exists(name):
            raise ValueError(f"text channel file {self.storage.url(name)} is missing")
        data = self.storage.read_bytes(name)
        if sha256_hex(data) != entry.sha256:
            raise ValueError(
                f"text channel file {self.storage.url(name)}: checksum mismatch (expected "
                f"{entry.sha256[:12]}..., got {sha256_hex(data)[:12]}...)"
            )
        return TextChannel.from_bytes(data)

    def write_manifest(self, manifest: Manifest) -> None:
        """Write the manifest (with its sha256 beside it): the version is complete, and can be
        evaluated or published, but nothing serves it yet."""
        base = posixpath.join(self.prefix, manifest.version)
        text = manifest.to_json()
        self.storage.write_text(posixpath.join(base, "manifest.json"), text)
        self.storage.write_text(
            posixpath.join(base, "manifest.sha256"), sha256_hex(text.encode("utf-8"))
        )

    def publish(self, manifest: Manifest) -> None:
        """Write the manifest, then point ``CURRENT`` at it: the version is live from here on,
        and ``HISTORY`` records it for ``rollback``."""
        self.write_manifest(manifest)
        self._point_at(manifest.version)

    def _point_at(self, version: str) -> None:
        self.storage.write_text(posixpath.join(self.prefix, "CURRENT"), version)
        history = self.history()
        if not history or history[-1] != version:
            self.storage.write_text(
                posixpath.join(self.prefix, "HISTORY"), "\n".join([*history, version]) + "\n"
            )

    def history(self) -> list[str]:
        """Published versions, oldest first (a version published twice appears twice)."""
        name = posixpath.join(self.prefix, "HISTORY")
        if not self.storage.exists(name):
            return []
        return [line.strip() for line in self.storage.read_text(name).splitlines() if line.strip()]

    def current(self) -> str:
        pointer = posixpath.join(self.prefix, "CURRENT")
        if not self.storage.exists(pointer):
            raise FileNotFoundError(
                f"no published index at {self.storage.url(self.prefix)}: run `vsearch reindex` first"
            )
        version = self.storage.read_text(pointer).strip()
        if not version:
            raise ValueError(
                f"{self.storage.url(pointer)} is empty: publish a version with "
                "`vsearch index publish VERSION` (see `vsearch index list`)"
            )
        return version

    def manifest(self, version: str | None = None) -> Manifest:
        """The manifest of ``version`` (default: the published one), checked against its sha256."""
        version = version or self.current()
        name = posixpath.join(self.prefix, version, "manifest.json")
        if not self.storage.exists(name):
            raise FileNotFoundError(
                f"index version {version!r} has no manifest ({self.storage.url(name)}): its "
                "reindex did not finish; see `vsearch index list`"
            )
        data = self.storage.read_bytes(name)
        digest_name = posixpath.join(self.prefix, version, "manifest.sha256")
        if self.storage.exists(digest_name):
            expected = self.storage.read_text(digest_name).strip()
            if sha256_hex(data) != expected:
                raise ValueError(
                    f"{self.storage.url(name)}: checksum mismatch (expected {expected[:12]}..., "
                    f"got {sha256_hex(data)[:12]}...): the manifest was changed or damaged"
                )
        try:
            return Manifest.from_json(data.decode("utf-8"))
        except ValueError as exc:
            raise ValueError(f"{self.storage.url(name)} is not a valid manifest: {exc}") from exc

    def versions(self) -> list[dict[str, object]]:
        """Every version folder, oldest first: ``version``, ``complete`` (has a manifest),
        ``current``, and for complete ones ``created_at``, ``model_version``, ``shards``,
        ``vectors``; a manifest that fails its checks gives ``error`` instead."""
        try:
            current = self.current()
        except (FileNotFoundError, ValueError):
            current = None
        rows: list[dict[str, object]] = []
        for version in self.storage.list(self.prefix):
            if version in ("CURRENT", "HISTORY"):
                continue
            row: dict[str, object] = {"version": version, "current": version == current}
            complete = self.storage.exists(posixpath.join(self.prefix, version, "manifest.json"))
            row["complete"] = complete
            if complete:
                try:
                    manifest = self.manifest(version)
                    row.update(
                        created_at=manifest.created_at,
                        model_version=manifest.model_version,
                        shards=len(manifest.shards),
                        vectors=manifest.total_count,
                    )
                except ValueError as exc:
                    row["error"] = str(exc)
            rows.append(row)
        return rows

    def publish_version(self, version: str) -> Manifest:
        """Serve an existing ``version`` again: its manifest and every shard file are verified
        first (a mismatch is refused, naming the file), then ``CURRENT`` moves to it."""
        manifest = self.manifest(version)
        self.load_shards(manifest)  # raises on a missing or damaged file
        self.load_text(manifest)
        self._point_at(version)
        return manifest

    def rollback(self) -> Manifest:
        """Publish the version that was published before the current one."""
        current = self.current()
        earlier = [v for v in self.history() if v != current]
        if not earlier:
            raise ValueError(f"nothing to roll back to: {current!r} is the only version published")
        return self.publish_version(earlier[-1])

    def gc(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest complete versions (never the published one), and
        unfinished versions older than the newest complete one (a reindex still running writes
        a newer one). Returns the deleted versions."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        rows = self.versions()
        complete = sorted(str(r["version"]) for r in rows if r["complete"])
        kept = set(complete[-keep:]) | {str(r["version"]) for r in rows if r["current"]}
        # A delta version reads its base's shards: keep every folder a kept version reads.
        for version in list(kept):
            with contextlib.suppress(FileNotFoundError, ValueError):  # damaged: reads nothing
                kept |= self.manifest(version).referenced_versions
        newest = complete[-1] if complete else ""
        doomed = [
            str(r["version"])
            for r in rows
            if str(r["version"]) not in kept and (r["complete"] or str(r["version"]) < newest)
        ]
        for version in doomed:
            self.storage.delete(posixpath.join(self.prefix, version))
        return doomed

    def load_shards(self, manifest: Manifest, names: list[str] | None = None) -> list[ShardIndex]:
        """Read and checksum-verify the shards ``names`` (all when None) of ``manifest``.

        The rescoring vectors are memory-mapped, not loaded: from the storage itself when it is
        local, else from a verified copy under :func:`index_cache_dir`. The codes and metadata
        are read into memory. A missing or damaged file raises ``ValueError`` naming it."""
        wanted = set(names) if names is not None else None
        shards = []
        for entry in manifest.shards:
            if wanted is not None and entry.name not in wanted:
                continue
            folder = entry.folder(manifest.version)
            base = posixpath.join(self.prefix, folder, "shards", entry.name)
            vectors: object = None  # a numpy memory map or a FAISS rows index
            rows_file = next((f for f in VECTOR_FILES if f in entry.files), None)
            if rows_file is not None:
                local = self._verified_local(folder, entry.name, rows_file, entry.files[rows_file])
                if rows_file == VECTORS_FILE:
                    vectors = open_rows(entry.name, local)
                else:
                    vectors = np.load(local, mmap_mode="r", allow_pickle=False)
            files = {
                f: self.storage.read_bytes(posixpath.join(base, f))
                for f in entry.files
                if f != rows_file
            }
            verify(entry, files, skip=(rows_file,))  # the vectors were verified on disk
            shard = ShardIndex.from_bytes(entry.name, files, entry.shortlist, entry.nprobe, vectors)
            shard.rows_file = local if rows_file is not None else None
            shard.set_deleted(entry.deleted_rows)
            shards.append(shard)
        return shards

    def read_meta(self, manifest: Manifest, entry: ShardEntry) -> pa.Table:
        """One shard's metadata table, checksum-verified (what a delta update matches ids in)."""
        base = posixpath.join(self.prefix, entry.folder(manifest.version), "shards", entry.name)
        files = {META_FILE: self.storage.read_bytes(posixpath.join(base, META_FILE))}
        verify(entry, files, skip=set(entry.files) - {META_FILE})
        return pq.read_table(pa.BufferReader(files[META_FILE]))

    def _verified_local(self, version: str, shard: str, file: str, digest: str) -> str:
        """A local path holding the shard's rescoring-vector ``file``, whose sha256 is
        ``digest`` (``ValueError`` naming the file otherwise): the file itself on local storage,
        else a copy in the cache (re-used when it is already there and intact)."""
        name = posixpath.join(self.prefix, version, "shards", shard, file)
        if not self.storage.exists(name):
            raise ValueError(f"shard {shard!r}: file {file!r} is missing")
        if self.storage.protocol in ("file", "local"):
            path = self.storage.path(name)
            with open(path, "rb") as fh:
                _check_digest(shard, file, _sha256_of(fh), digest)
            return path
        suffix = posixpath.splitext(file)[1]
        cached = os.path.join(index_cache_dir(), digest[:2], f"{digest}{suffix}")
        if os.path.exists(cached):
            with open(cached, "rb") as fh:
                if _sha256_of(fh) == digest:
                    return cached
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = f"{cached}.tmp-{uuid.uuid4().hex}"
        hasher = hashlib.sha256()
        try:
            with self.storage.fs.open(self.storage.path(name), "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    hasher.update(chunk)
                    dst.write(chunk)
            _check_digest(shard, file, hasher.hexdigest(), digest)
            os.replace(tmp, cached)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return cached


def _sha256_of(fh: BinaryIO) -> str:
    hasher = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        hasher.update(chunk)
    return hasher.hexdigest()


def _check_digest(shard: str, file: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise ValueError(
            f"shard {shard!r}: checksum mismatch for file {file!r} "
            f"(expected {expected}, got {actual})"
        )


def _shard_order(entry: ShardEntry) -> tuple[str, str, int, bool]:
    """A manifest's shard order: by role (catalogue first), category, bucket, base before delta."""
    return (entry.role, entry.category, entry.bucket, entry.delta)
