"""The text channel of an index version: one vector per catalogue product, from its title.

A hybrid query (a photo plus words) is answered by the photo's search; the words then re-score
the products it found (``vsearch.rank.hybrid``). The titles are embedded once, at reindex, by a
text encoder given as a function (``vsearch.models.text.TextEncoder.encode`` in the jobs), and
stored as float16 with the titles they came from, so that a delta update re-embeds only the
products whose title is new or changed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["TEXT_FILE", "TextChannel", "product_titles"]

#: The channel's file in an index version's folder.
TEXT_FILE = "text/titles.npz"

Encode = Callable[[list[str]], np.ndarray]


def product_titles(catalog: pa.Table) -> tuple[list[str], list[str]]:
    """Each product of a catalogue table once (first row wins), with its title (None: "")."""
    ids = catalog.column("product_id").to_pylist()
    titles = catalog.column("title").to_pylist()
    seen: dict[str, str] = {}
    for pid, title in zip(ids, titles, strict=True):
        if pid is not None and str(pid) not in seen:
            seen[str(pid)] = "" if title is None else str(title)
    return list(seen), list(seen.values())


@dataclass(frozen=True)
class TextChannel:
    """``vectors[i]`` (float16, L2-normalised; a zero row for an empty title) embeds the title
    ``titles[i]`` of product ``product_ids[i]`` with the text model ``model``."""

    product_ids: list[str]
    titles: list[str]
    vectors: np.ndarray
    model: str

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.product_ids):
            raise ValueError(
                f"text channel: {len(self.product_ids)} products but vectors of shape "
                f"{self.vectors.shape}"
            )
        if len(self.titles) != len(self.product_ids):
            raise ValueError("text channel: one title per product is needed")
        object.__setattr__(self, "_row", {p: i for i, p in enumerate(self.product_ids)})

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def build(
        cls,
        product_ids: Sequence[str],
        titles: Sequence[str],
        encode: Encode,
        model: str,
        base: TextChannel | None = None,
        batch: int = 256,
        progress: Callable[[int], None] | None = None,
    ) -> TextChannel:
        """Embed the titles, re-using ``base``'s vector of every product whose title did not
        change (same model); ``progress`` gets the count of titles embedded per batch."""
        ids, texts = [str(p) for p in product_ids], [str(t) for t in titles]
        reuse = base if base is not None and base.model == model else None
        rows: list[np.ndarray | None] = [None] * len(ids)
        todo: list[int] = []
        for i, (pid, title) in enumerate(zip(ids, texts, strict=True)):
            j = reuse._row.get(pid) if reuse is not None else None  # type: ignore[attr-defined]
            if j is not None and reuse is not None and reuse.titles[j] == title:
                rows[i] = reuse.vectors[j]
            else:
                todo.append(i)
        dim = reuse.dim if reuse is not None else None
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            got = np.asarray(encode([texts[i] for i in chunk]), dtype=np.float32)
            dim = got.shape[1]
            for i, vec in zip(chunk, got, strict=True):
                rows[i] = vec
            if progress is not None:
                progress(len(chunk))
        if dim is None:  # nothing to embed and nothing re-used: an empty catalogue
            dim = np.asarray(encode([""]), dtype=np.float32).shape[1]
        vectors = (
            np.stack([np.asarray(r, np.float16) for r in rows])  # type: ignore[arg-type]
            if rows
            else np.zeros((0, dim), np.float16)
        )
        return cls(ids, texts, vectors, model)

    def similarities(self, query: np.ndarray, product_ids: Sequence[str]) -> np.ndarray:
        """Cosine similarity of the L2-normalised ``query`` ``(d,)`` to each product's title,
        ``(len(product_ids),) float32``; NaN for a product the channel does not hold."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"text query of dimension {query.shape[0]}, channel has {self.dim}")
        out = np.full(len(product_ids), np.nan, dtype=np.float32)
        rows = [self._row.get(str(p), -1) for p in product_ids]  # type: ignore[attr-defined]
        have = np.asarray([r >= 0 for r in rows], dtype=bool)
        if have.any():
            picked = self.vectors[np.asarray(rows)[have]].astype(np.float32)
            out[have] = picked @ query
        return out

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            product_ids=np.asarray(self.product_ids, dtype=str),
            titles=np.asarray(self.titles, dtype=str),
            vectors=self.vectors.astype(np.float16),
            model=np.asarray(self.model, dtype=str),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TextChannel:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(
                [str(p) for p in z["product_ids"]],
                [str(t) for t in z["titles"]],
                np.asarray(z["vectors"], dtype=np.float16),
                str(z["model"]),
            )
