"""``Storage``: a root URL plus fsspec options, with bytes, text and Parquet helpers."""

from __future__ import annotations

import io
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def _split_protocol(url: str) -> tuple[str, str]:
    if "://" in url:
        protocol, path = url.split("://", 1)
        return protocol, path
    return "file", url


class Storage:
    """Files under ``root``: a local path (made absolute), ``file://``, ``memory://`` or ``s3://``.

    Relative names are joined under the root; absolute URLs (anything with ``://``, or a path
    starting with ``/``) are used as they are, with the same filesystem options.
    """

    def __init__(self, root: str, options: dict[str, Any] | None = None) -> None:
        protocol, path = _split_protocol(root)
        if protocol == "file":
            path = os.path.abspath(path)
        self.protocol = protocol
        self.options = dict(options or {})
        self.fs: fsspec.AbstractFileSystem = fsspec.filesystem(protocol, **self.options)
        self.root_path = path.rstrip("/") or "/"
        self.root = f"{protocol}://{self.root_path}"

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # -- names ---------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        """The filesystem path (no protocol) of ``name`` on this storage's filesystem."""
        protocol, path = _split_protocol(name)
        if "://" in name:
            if protocol != self.protocol:
                raise ValueError(f"{name!r} is not on this storage ({self.protocol}://)")
            return path
        if name.startswith("/"):
            return name
        return posixpath.join(self.root_path, name)

    def url(self, name: str) -> str:
        """The full URL of ``name``."""
        return f"{self.protocol}://{self.path(name)}"

    # -- bytes and text ------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def read_bytes(self, name: str) -> bytes:
        """Bytes of ``name``; an absolute URL on another filesystem (e.g. local images of an
        ``s3://`` deployment) is read through that filesystem with default options."""
        protocol, path = _split_protocol(name)
        if "://" in name and protocol != self.protocol:
            fs = fsspec.filesystem(protocol)
        else:
            fs, path = self.fs, self.path(name)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{protocol}://{path} does not exist") from None

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data``; on local disk through a temporary file and a rename (never half-written)."""
        path = self.path(name)
        parent = posixpath.dirname(path)
        if self.protocol in ("file", "local"):
            os.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            return
        if self.protocol == "memory":
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, data)

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def list(self, name: str) -> list[str]:
        """Entry names directly below ``name`` (empty when it does not exist)."""
        path = self.path(name)
        if not self.fs.exists(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))

    def delete(self, name: str) -> None:
        path = self.path(name)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # -- tables --------------------------------------------------------------------------------
    def read_table(self, name: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(name)))

    def write_table(self, name: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(name, buf.getvalue())

    # -- for Ray -------------------------------------------------------------------------------
    def pyarrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem over the same fsspec filesystem, and the root path on it."""
        if self.protocol in ("file", "local"):
            return pafs.LocalFileSystem(), self.root_path
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs)), self.root_path
