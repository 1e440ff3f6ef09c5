"""Triplets from the click log, with a policy for noisy (multi-click) sessions.

The click log (``CLICK_SCHEMA``) has one row per click; the rows of one ``query_id`` are one search
session. Per session:

- clicks are the *distinct* clicked products, in time order (a repeated click on the same product
  counts once, as ``repeat_clicks``);
- ``MiningConfig.multi_click`` decides what a session with several clicks gives: "drop" (when it has
  more than ``max_clicks``), "downweight" (every triplet weighted ``1 / clicks``) or "keep";
- each kept click gives the triplets (query image, clicked product, negative) for every *hard*
  negative (shown in the session and clicked in none of its rows, ``hard_negatives``) and for
  ``easy_negatives`` *easy* ones: random catalogue products of a category other than the clicked
  product's, drawn from a generator seeded by ``(seed, query_id)``, so a session gives the same
  triplets however the log is split across workers.

Everything dropped is counted by reason (``STAT_NAMES``). Pure pyarrow/numpy: the mine job runs
``mine_click_log`` once per session group on Ray Data; tests call it on a whole table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vsearch.config import MiningConfig
from vsearch.models.miners import hard_negatives

#: One row per mined triplet. ``kind`` is "hard" (shown, not clicked) or "easy" (another
#: category); ``weight`` is 1, or ``1 / clicks`` under the "downweight" policy.
TRIPLET_SCHEMA = pa.schema(
    [
        pa.field("query_image_uri", pa.string(), nullable=False),
        pa.field("positive_product_id", pa.string(), nullable=False),
        pa.field("negative_product_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)

#: The counters ``mine_click_log`` returns, every one present (zero when nothing happened).
STAT_NAMES = (
    "sessions",  # distinct query_id values seen
    "click_rows",  # rows of the click log seen
    "repeat_clicks",  # rows repeating a product already clicked in the same session
    "sessions_kept",
    "sessions_dropped_multi_click",  # "drop" policy: more than max_clicks distinct clicks
    "clicks_dropped_multi_click",  # the distinct clicks of those sessions
    "clicks_dropped_unknown_product",  # clicked product not in the catalogue
    "shown_unknown_product",  # shown-not-clicked products not in the catalogue (not negatives)
    "easy_negatives_short",  # easy negatives asked for but not available (too few categories)
    "clicks_without_negatives",  # kept clicks that gave no triplet
    "hard_triplets",
    "easy_triplets",
)


class ProductCategories:
    """The category of every catalogue product, and uniform draws of products outside a category.

    Products are held sorted by (category, product id), so the products of one category are one
    contiguous span and a draw among all the others is a draw of indices skipping that span.
    """

    def __init__(self, product_ids: Sequence[str], categories: Sequence[str]) -> None:
        category_of: dict[str, str] = {}
        for pid, cat in zip(product_ids, categories, strict=True):
            category_of.setdefault(pid, cat)  # one row per image: a product repeats
        order = sorted(category_of, key=lambda p: (category_of[p], p))
        self._category_of = category_of
        self._ids = order
        self._span: dict[str, tuple[int, int]] = {}
        for i, pid in enumerate(order):
            start, count = self._span.get(category_of[pid], (i, 0))
            self._span[category_of[pid]] = (start, count + 1)

    @classmethod
    def from_table(cls, catalog: pa.Table) -> ProductCategories:
        """From a table with ``product_id`` and ``category`` columns (``CATALOG_SCHEMA``)."""
        return cls(catalog["product_id"].to_pylist(), catalog["category"].to_pylist())

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._category_of

    def category(self, product_id: str) -> str | None:
        """The category of ``product_id``; None when it is not in the catalogue."""
        return self._category_of.get(product_id)

    def sample_outside(self, category: str, k: int, rng: np.random.Generator) -> list[str]:
        """Up to ``k`` distinct product ids, uniformly drawn among those not in ``category``
        (fewer when there are fewer such products), in draw order."""
        start, count = self._span.get(category, (len(self._ids), 0))
        pool = len(self._ids) - count
        if k <= 0 or pool <= 0:
            return []
        picks = rng.choice(pool, size=min(k, pool), replace=False)
        return [self._ids[int(i) + count if i >= start else int(i)] for i in picks]


def session_rng(seed: int, query_id: str) -> np.random.Generator:
    """The generator of one session: a function of ``(seed, query_id)`` only."""
    digest = hashlib.blake2b(query_id.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


class _TripletColumns:
    def __init__(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in TRIPLET_SCHEMA.names}

    def add(self, uri: str, positive: str, negative: str, kind: str, weight: float) -> None:
        for name, value in zip(
            TRIPLET_SCHEMA.names, (uri, positive, negative, kind, weight), strict=True
        ):
            self.columns[name].append(value)

    def to_table(self) -> pa.Table:
        return pa.table(self.columns, schema=TRIPLET_SCHEMA)


def _mine_session(
    query_id: str,
    uris: Sequence[str],
    shown: Sequence[Sequence[str]],
    clicked: Sequence[str],
    products: ProductCategories,
    cfg: MiningConfig,
    stats: dict[str, int],
    out: _TripletColumns,
) -> None:
    """Append the triplets of one session (its rows in time order) to ``out``."""
    stats["sessions"] += 1
    stats["click_rows"] += len(clicked)
    clicks = list(dict.fromkeys(clicked))
    stats["repeat_clicks"] += len(clicked) - len(clicks)
    if cfg.multi_click == "drop" and len(clicks) > cfg.max_clicks:
        stats["sessions_dropped_multi_click"] += 1
        stats["clicks_dropped_multi_click"] += len(clicks)
        return
    stats["sessions_kept"] += 1
    weight = 1.0 / len(clicks) if cfg.multi_click == "downweight" else 1.0
    hard = hard_negatives(shown, clicks)
    known_hard = [p for p in hard if p in products]
    stats["shown_unknown_product"] += len(hard) - len(known_hard)
    rng = session_rng(cfg.seed, query_id)
    for positive in clicks:
        category = products.category(positive)
        if category is None:
            stats["clicks_dropped_unknown_product"] += 1
            continue
        easy = products.sample_outside(category, cfg.easy_negatives, rng)
        stats["easy_negatives_short"] += cfg.easy_negatives - len(easy)
        if not known_hard and not easy:
            stats["clicks_without_negatives"] += 1
        for kind, negatives in (("hard", known_hard), ("easy", easy)):
            for negative in negatives:
                out.add(uris[0], positive, negative, kind, weight)
            stats[f"{kind}_triplets"] += len(negatives)


def mine_click_log(
    clicks: pa.Table, products: ProductCategories, cfg: MiningConfig
) -> tuple[pa.Table, dict[str, int]]:
    """Triplets (``TRIPLET_SCHEMA``) from click-log rows (``CLICK_SCHEMA`` columns; the timestamp
    only orders a session's clicks and may be absent) and the counters of ``STAT_NAMES``.

    Sessions are processed in ``query_id`` order and their clicks in time order (ties keep the
    table's order), so the result depends only on the rows, not on how the table was cut.
    A session's query image is the one of its first row.
    """
    stats = dict.fromkeys(STAT_NAMES, 0)
    out = _TripletColumns()
    if clicks.num_rows == 0:
        return out.to_table(), stats
    keys = [("query_id", "ascending")]
    if "timestamp" in clicks.column_names:
        keys.append(("timestamp", "ascending"))
    rows = clicks.take(pc.sort_indices(clicks.select([k for k, _ in keys]), sort_keys=keys))
    qids = rows["query_id"].to_pylist()
    uris = rows["query_image_uri"].to_pylist()
    shown = rows["shown_product_ids"].to_pylist()
    clicked = rows["clicked_product_id"].to_pylist()
    start = 0
    for end in range(1, len(qids) + 1):
        if end == len(qids) or qids[end] != qids[start]:
            _mine_session(
                qids[start],
                uris[start:end],
                shown[start:end],
                clicked[start:end],
                products,
                cfg,
                stats,
                out,
            )
            start = end
    return out.to_table(), stats
