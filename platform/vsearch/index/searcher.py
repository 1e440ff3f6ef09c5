"""Search many category shards at once and merge their per-shard top-k into a global top-k."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vsearch.index.builder import BuiltShard
from vsearch.index.manifest import CATALOG, ShardEntry
from vsearch.index.shard import META_COLUMNS, ShardIndex


@dataclass(frozen=True)
class Hit:
    """One retrieved catalogue image: its similarity ``score`` and metadata, and its shard."""

    score: float
    image_id: str
    product_id: str
    category: str
    title: str
    quality: float
    popularity: float
    shard: str


def merge_topk(
    per_shard: Sequence[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-shard results into a global top-``k`` per query.

    ``per_shard[j]`` is ``(scores, rows)`` of shard ``j``: (m, k_j) float32 and (m, k_j) int64,
    with ``rows == -1`` marking padding (its score is ignored). Returns ``(scores, shard, rows)``,
    each (m, k): float32 descending, int64 shard index into ``per_shard``, int64 row in that shard,
    padded with ``-inf`` / ``-1`` / ``-1``. Ties go to the lower shard index, then the lower row.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not per_shard:
        raise ValueError("merge_topk needs at least one shard's results (m is unknown otherwise)")
    m = per_shard[0][0].shape[0]
    for j, (s, r) in enumerate(per_shard):
        if s.ndim != 2 or s.shape != r.shape or s.shape[0] != m:
            raise ValueError(f"shard {j}: scores {s.shape} / rows {r.shape} do not match m={m}")
    scores = np.concatenate([s.astype(np.float32, copy=False) for s, _ in per_shard], axis=1)
    rows = np.concatenate([r.astype(np.int64, copy=False) for _, r in per_shard], axis=1)
    shard = np.concatenate(
        [np.full(r.shape, j, dtype=np.int64) for j, (_, r) in enumerate(per_shard)],
        axis=1,
    )
    valid = rows >= 0
    scores = np.where(valid, scores, np.float32(-np.inf))
    shard = np.where(valid, shard, -1)
    # Padding sorts last: invalid first key, then score descending, shard and row ascending.
    order = np.lexsort((rows, shard, -scores, ~valid), axis=1)[:, :k]
    out_s = np.full((m, k), -np.inf, dtype=np.float32)
    out_j = np.full((m, k), -1, dtype=np.int64)
    out_r = np.full((m, k), -1, dtype=np.int64)
    kk = order.shape[1]
    out_s[:, :kk] = np.take_along_axis(scores, order, axis=1)
    out_j[:, :kk] = np.take_along_axis(shard, order, axis=1)
    out_r[:, :kk] = np.take_along_axis(rows, order, axis=1)
    return out_s, out_j, out_r


class ShardedIndex:
    """Many :class:`ShardIndex` of one width, each tagged with the category it holds and its
    role: catalogue images, or labelled reference photos that only the category vote searches."""

    def __init__(
        self,
        shards: Iterable[tuple[str, ShardIndex]],
        roles: Mapping[str, str] | None = None,
    ) -> None:
        """``shards``: (category, shard) pairs; names must be unique and widths equal.
        ``roles``: shard name -> role (``"catalog"`` when not named)."""
        roles = roles or {}
        #: (category, role, shard) of every shard, in construction order.
        self._shards: list[tuple[str, str, ShardIndex]] = [
            (c, roles.get(s.name, CATALOG), s) for c, s in shards
        ]
        names = [s.name for _, _, s in self._shards]
        if len(set(names)) != len(names):
            raise ValueError("shard names must be unique")
        dims = {s.dim for _, _, s in self._shards}
        if len(dims) > 1:
            raise ValueError(f"shards have different widths {sorted(dims)}")
        self._dim = dims.pop() if dims else None

    @classmethod
    def from_built(cls, built: Iterable[BuiltShard]) -> ShardedIndex:
        """An index over the output of :func:`~vsearch.index.builder.build_shards`."""
        built = list(built)
        return cls(((b.category, b.index) for b in built), {b.name: b.role for b in built})

    @classmethod
    def of_entries(
        cls, entries: Iterable[ShardEntry], shards: Iterable[ShardIndex]
    ) -> ShardedIndex:
        """An index over loaded ``shards``, their categories and roles from their manifest
        ``entries`` (a superset: a searcher loads only its own group)."""
        by_name = {e.name: e for e in entries}
        shards = list(shards)
        return cls(
            ((by_name[s.name].category, s) for s in shards),
            {s.name: by_name[s.name].role for s in shards},
        )

    @property
    def galleries(self) -> set[str]:
        """The roles of the shards held (``"catalog"``, ``"reference"``)."""
        return {r for _, r, _ in self._shards}

    @property
    def dim(self) -> int | None:
        """Vector width, ``None`` for an index without shards."""
        return self._dim

    @property
    def categories(self) -> list[str]:
        """Sorted distinct categories of the catalogue shards held."""
        return sorted({c for c, r, _ in self._shards if r == CATALOG})

    @property
    def shards(self) -> list[tuple[str, ShardIndex]]:
        """(category, shard) pairs, in construction order."""
        return [(c, s) for c, _, s in self._shards]

    def __len__(self) -> int:
        return sum(len(s) for _, _, s in self._shards)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        shortlist: int | None = None,
        categories: list[str] | None = None,
        gallery: str = CATALOG,
    ) -> list[list[Hit]]:
        """Global top-``k`` hits per query over the ``gallery`` shards (``"catalog"``, or the
        vote's ``"reference"`` photos) of ``categories``.

        ``queries``: (m, d) float (normalised by each shard). ``shortlist`` is the Hamming
        shortlist per shard (see :meth:`ShardIndex.search`); None: each shard's tuned one.
        ``categories=None`` searches every shard; unknown categories are ignored, and when no
        shard matches each query gets ``[]``.
        Returns ``m`` lists of at most ``k`` hits, best first.
        """
        queries = np.asarray(queries)
        if queries.ndim != 2:
            raise ValueError(f"queries must be (m, d), got shape {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        m = queries.shape[0]
        wanted = None if categories is None else set(categories)
        selected = [
            s
            for c, role, s in self._shards
            if role == gallery and (wanted is None or c in wanted) and len(s) > 0
        ]
        if not selected or m == 0:
            return [[] for _ in range(m)]
        per_shard = [s.search(queries, k, shortlist) for s in selected]
        scores, shard_idx, rows = merge_topk(per_shard, k)
        return _to_hits(selected, scores, shard_idx, rows)


def _to_hits(
    shards: list[ShardIndex],
    scores: np.ndarray,
    shard_idx: np.ndarray,
    rows: np.ndarray,
) -> list[list[Hit]]:
    """Turn merged (m, k) arrays into hit lists, reading each shard's metadata once."""
    m, k = scores.shape
    slots: list[list[Hit | None]] = [[None] * k for _ in range(m)]
    for j, shard in enumerate(shards):
        qi, pos = np.nonzero(shard_idx == j)
        if len(qi) == 0:
            continue
        cols = shard.meta.select(list(META_COLUMNS)).take(pa.array(rows[qi, pos])).to_pydict()
        for t, (q, p) in enumerate(zip(qi.tolist(), pos.tolist(), strict=True)):
            slots[q][p] = Hit(
                score=float(scores[q, p]),
                image_id=cols["image_id"][t],
                product_id=cols["product_id"][t],
                category=cols["category"][t],
                title=cols["title"][t],
                quality=float(cols["quality"][t]),
                popularity=float(cols["popularity"][t]),
                shard=shard.name,
            )
    return [[h for h in row if h is not None] for row in slots]


def assign_shards(entries: Sequence[ShardEntry], searchers: int) -> list[list[ShardEntry]]:
    """Spread shards over ``searchers`` groups for the service: largest first (by searchable
    rows), each to the least-loaded group; always ``searchers`` groups, some possibly empty.
    The service applies it to every version it loads, so a new version may regroup shards."""
    if searchers < 1:
        raise ValueError(f"searchers must be >= 1, got {searchers}")
    groups: list[list[ShardEntry]] = [[] for _ in range(searchers)]
    load = [0] * searchers
    live = [(e.count - len(e.deleted_rows), e) for e in entries]
    for rows, entry in sorted(live, key=lambda t: (-t[0], t[1].name)):
        i = load.index(min(load))
        groups[i].append(entry)
        load[i] += rows
    return groups
