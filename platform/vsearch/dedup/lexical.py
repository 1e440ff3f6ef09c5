"""The lexical channel: BM25 over listing titles with tantivy, the Elasticsearch baseline of Coupang.

Titles are tokenised here (lower-case letters and digits, plus every model-number-like chunk with
its punctuation removed, so "PS-LX350H" also matches "PSLX350H") and indexed in an in-memory
tantivy index with the listing's row, source and category. Each listing queries the index with its
own tokens (any may match), restricted to its category and, for two-shop benchmarks, to the other
sources. A hit's score is its BM25 divided by the query listing's BM25 against itself, so it is
about 1 for a near-identical title and comparable across listings of different lengths.
"""

from __future__ import annotations

import numpy as np
import tantivy

from vsearch.dedup.neighbours import Neighbours, merge_neighbours
from vsearch.dedup.tokens import title_tokens

__all__ = ["Bm25Index"]


class Bm25Index:
    """An in-memory tantivy BM25 index over ``texts``, one document per row.

    ``texts``, ``categories``, ``sources``: ``(n,)`` strings. Rows whose text has no token are
    not indexed (and find nothing).
    """

    def __init__(self, texts: list[str], categories: list[str], sources: list[str]) -> None:
        builder = tantivy.SchemaBuilder()
        builder.add_integer_field("row", stored=True, indexed=True, fast=True)
        builder.add_text_field("category", stored=False, tokenizer_name="raw")
        builder.add_text_field("source", stored=False, tokenizer_name="raw")
        # Tokens are ours (alphanumeric, lower case); tantivy's default tokenizer keeps them.
        builder.add_text_field("body", stored=False)
        self.schema = builder.build()
        self.tokens = [title_tokens(t) for t in texts]
        self.categories = [str(c) for c in categories]
        self.sources = [str(s) for s in sources]
        index = tantivy.Index(self.schema)
        writer = index.writer(heap_size=64_000_000, num_threads=1)
        for row, toks in enumerate(self.tokens):
            if toks:
                writer.add_document(
                    tantivy.Document(
                        row=row,
                        category=self.categories[row],
                        source=self.sources[row],
                        body=" ".join(toks),
                    )
                )
        writer.commit()
        writer.wait_merging_threads()
        index.reload()
        self.searcher = index.searcher()

    def _query(self, row: int, cross_source_only: bool, within_category: bool, only_self: bool):
        q = tantivy.Query
        terms = [
            (tantivy.Occur.Should, q.term_query(self.schema, "body", t))
            for t in dict.fromkeys(self.tokens[row])
        ]
        clauses = list(terms)
        if only_self:
            clauses.append((tantivy.Occur.Must, q.term_query(self.schema, "row", row)))
        else:
            if within_category:
                clauses.append(
                    (
                        tantivy.Occur.Must,
                        q.term_query(self.schema, "category", self.categories[row]),
                    )
                )
            if cross_source_only:
                clauses.append(
                    (tantivy.Occur.MustNot, q.term_query(self.schema, "source", self.sources[row]))
                )
        return q.boolean_query(clauses)

    def _row_of(self, address) -> int:
        return int(self.searcher.doc(address)["row"][0])

    def self_score(self, row: int) -> float:
        """BM25 of row ``row``'s own tokens against its own document (0 if it has none)."""
        if not self.tokens[row]:
            return 0.0
        hits = self.searcher.search(self._query(row, False, False, True), 1).hits
        return float(hits[0][0]) if hits else 0.0

    def neighbours(
        self,
        k: int,
        queries: np.ndarray | None = None,
        *,
        cross_source_only: bool = False,
        within_category: bool = True,
    ) -> Neighbours:
        """Each query row's ``k`` best other rows by normalised BM25 (``queries``: ``(n,) bool``
        or None for all rows)."""
        n = len(self.tokens)
        asked = np.ones(n, bool) if queries is None else np.asarray(queries, bool)
        q_rows, n_rows, scores = [], [], []
        for row in np.flatnonzero(asked):
            row = int(row)
            if not self.tokens[row]:
                continue
            norm = self.self_score(row) or 1.0
            hits = self.searcher.search(
                self._query(row, cross_source_only, within_category, False), k + 1
            ).hits
            found = [(score, self._row_of(addr)) for score, addr in hits]
            found = [(s, r) for s, r in found if r != row][:k]
            q_rows += [row] * len(found)
            n_rows += [r for _, r in found]
            scores += [s / norm for s, _ in found]
        part = Neighbours(
            np.asarray(q_rows, np.int64),
            np.asarray(n_rows, np.int64),
            np.asarray(scores, np.float32),
            np.zeros(len(q_rows), np.int32),
        )
        return merge_neighbours([part], k)
