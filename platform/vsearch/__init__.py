"""vsearch: e-commerce visual search on Ray.

The core (this package minus ``storage`` and ``runtime``) depends on numpy, torch, faiss, pyarrow and
pydantic only; ``vsearch.storage`` adds fsspec I/O and ``vsearch.runtime`` is the only part that imports
ray.
"""

__version__ = "0.1.0"
