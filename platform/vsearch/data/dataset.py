"""``CatalogDataset``: the tables every job reads, in the schemas of ``vsearch.schema``."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute

from vsearch.schema import CATALOG_SCHEMA, CLICK_SCHEMA, DUPLICATE_SCHEMA, QUERY_SCHEMA, conform


@dataclass
class CatalogDataset:
    """A catalogue with its real-shot queries and, where the source has them, clicks and duplicates.

    ``catalog`` follows ``CATALOG_SCHEMA``, ``queries`` ``QUERY_SCHEMA``, ``clicks`` ``CLICK_SCHEMA`` and
    ``duplicates`` ``DUPLICATE_SCHEMA``; the constructor conforms each table to its schema.
    """

    catalog: pa.Table
    queries: pa.Table
    clicks: pa.Table | None = None
    duplicates: pa.Table | None = None

    def __post_init__(self) -> None:
        self.catalog = conform(self.catalog, CATALOG_SCHEMA)
        self.queries = conform(self.queries, QUERY_SCHEMA)
        if self.clicks is not None:
            self.clicks = conform(self.clicks, CLICK_SCHEMA)
        if self.duplicates is not None:
            self.duplicates = conform(self.duplicates, DUPLICATE_SCHEMA)

    def queries_of(self, split: str) -> pa.Table:
        """The query rows whose ``split`` equals ``split``; raises ``ValueError`` if there are none."""
        mask = pa.compute.equal(self.queries["split"], split)
        rows = self.queries.filter(mask)
        if rows.num_rows == 0:
            have = sorted(set(self.queries["split"].to_pylist()))
            raise ValueError(f"no queries in split {split!r}; splits present: {have}")
        return rows
