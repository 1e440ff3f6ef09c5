"""Dataset adapters: each turns a source (synthetic generator, GroceryStore folder, ...) into a
``CatalogDataset`` of Arrow tables in the shared schemas."""

from vsearch.data.dataset import CatalogDataset

__all__ = ["CatalogDataset"]
