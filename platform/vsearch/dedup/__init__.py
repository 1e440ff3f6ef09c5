"""Catalogue deduplication (Coupang): image, text and lexical channels, union, combiner, clusters.

Modules: ``neighbours`` (batch kNN self-join in shards), ``lexical`` (tantivy BM25), ``tokens``,
``candidates`` (the union), ``combiner``, ``clusters`` and ``pipeline`` (the policy in one place).
"""
