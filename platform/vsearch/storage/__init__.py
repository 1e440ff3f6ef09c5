"""I/O: every path is a URL (local path, ``file://``, ``memory://``, ``s3://``) opened through fsspec.

The core never does I/O; this layer reads and writes what the core produces as tables and bytes.
"""

from vsearch.storage.artifacts import IndexStore, ModelStore
from vsearch.storage.datasets import read_dataset, write_dataset
from vsearch.storage.fs import Storage

__all__ = ["IndexStore", "ModelStore", "Storage", "read_dataset", "write_dataset"]
