"""The feature-map cache: a frozen backbone runs once per image and view.

``features/<backbone id>/part-<uuid>.parquet`` files hold rows ``(key, map)``. ``key`` is the
sha256 of the image's bytes, with ``@<fraction>`` for a centre-crop view (``view_key``) or
``#box<x0,y0,x1,y1>+<margin>`` for a box view (``box_key``); ``map``
is the ``(C, g, g)`` float16 backbone output as raw bytes (its shape is in the file's metadata).
The backbone id names the network and its weights' digest, so a new backbone never reads
another's maps. Parts are only ever added: a writer that dies leaves whole parts behind, and a
second run computes only the keys still missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import uuid
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vsearch.storage.fs import Storage

_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("map", pa.binary())])


def content_key(data: bytes) -> str:
    """The cache key of an image: sha256 of its bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def view_key(key: str, fraction: float) -> str:
    """The cache key of one view (centre crop ``fraction``) of the image with content ``key``."""
    return key if fraction >= 1.0 else f"{key}@{fraction:g}"


def box_key(key: str, box: Sequence[float], margin: float) -> str:
    """The cache key of the box view (``vsearch.imaging.box_crop``) of the image with content
    ``key``, for a box already rounded by ``round_box``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return f"{key}#box{x0:.3f},{y0:.3f},{x1:.3f},{y1:.3f}+{margin:g}"


def box_of_key(key: str) -> tuple[list[float], float] | None:
    """The rounded box and margin a box-view key (``box_key``) names; None for other keys."""
    _, sep, rest = key.rpartition("#box")
    if not sep:
        return None
    coords, plus, margin = rest.partition("+")
    try:
        box = [float(v) for v in coords.split(",")]
        return (box, float(margin)) if plus and len(box) == 4 else None
    except ValueError:
        return None


def round_box(box: Sequence[float]) -> list[float]:
    """A box rounded as box-view keys name it (crops are cut from the rounded box)."""
    return [round(float(v), 3) for v in box]


class FeatureCache:
    """Feature maps of one backbone (``backbone_id``) under ``<storage>/features/``."""

    def __init__(self, storage: Storage, backbone_id: str, prefix: str = "features") -> None:
        self.storage = storage
        self.backbone_id = backbone_id
        self.folder = posixpath.join(prefix, backbone_id)

    def _parts(self) -> list[str]:
        return [n for n in self.storage.list(self.folder) if n.endswith(".parquet")]

    def _read_part(self, name: str, columns: list[str] | None = None) -> pa.Table:
        data = self.storage.read_bytes(posixpath.join(self.folder, name))
        return pq.read_table(io.BytesIO(data), columns=columns)

    def keys(self) -> set[str]:
        """Every key with a cached map."""
        found: set[str] = set()
        for name in self._parts():
            found.update(self._read_part(name, ["key"])["key"].to_pylist())
        return found

    def write(self, keys: Sequence[str], maps: np.ndarray) -> None:
        """Add one part: ``maps`` ``(n, C, g, g)`` for ``keys`` (stored as float16)."""
        if len(keys) != len(maps):
            raise ValueError(f"{len(keys)} keys for {len(maps)} maps")
        if not len(keys):
            return
        half = np.ascontiguousarray(maps, dtype=np.float16)
        table = pa.table(
            {"key": pa.array(list(keys), pa.string()), "map": [m.tobytes() for m in half]},
            schema=_SCHEMA.with_metadata({"shape": json.dumps(list(half.shape[1:]))}),
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.storage.write_bytes(
            posixpath.join(self.folder, f"part-{uuid.uuid4().hex}.parquet"), buf.getvalue()
        )

    def locate(self, keys: Iterable[str]) -> dict[str, str]:
        """``{key: part}``: the part file holding each of ``keys`` that is cached (only the key
        columns are read). Streaming readers then open just the parts they need."""
        wanted = set(keys)
        found: dict[str, str] = {}
        for name in self._parts():
            for key in self._read_part(name, ["key"])["key"].to_pylist():
                if key in wanted:
                    found.setdefault(key, name)
        return found

    def read_part(self, part: str, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """``{key: (C, g, g) float16}`` for those of ``keys`` (all when None) stored in part
        file ``part``."""
        wanted = set(keys) if keys is not None else None
        table = self._read_part(part)
        shape = tuple(json.loads(table.schema.metadata[b"shape"]))
        out: dict[str, np.ndarray] = {}
        for key, blob in zip(table["key"].to_pylist(), table["map"].to_pylist(), strict=True):
            if (wanted is None or key in wanted) and key not in out:
                out[key] = np.frombuffer(blob, dtype=np.float16).reshape(shape)
        return out

    def read(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """``{key: (C, g, g) float16}`` for ``keys`` (all when None); missing keys are absent."""
        wanted = set(keys) if keys is not None else None
        out: dict[str, np.ndarray] = {}
        for name in self._parts():
            for key, value in self.read_part(name, wanted).items():
                out.setdefault(key, value)
        return out
