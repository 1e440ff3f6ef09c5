"""Re-ranking of retrieved images into product results."""

from vsearch.rank.rerank import RankedProduct, Reranker

__all__ = ["RankedProduct", "Reranker"]
