"""``Embedder``: a ``SearchNetwork`` plus its preprocessing and views, in eval mode, on numpy in and
out.

The one place images become embeddings, boxes and category probabilities: the reindex job, the
evaluation and the service all call it. With several views (centre crops) the backbone runs once
per view; the embedding is the normalised mean of the views' embeddings and the category
probabilities their mean, the box comes from the first view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vsearch.imaging import centre_crop
from vsearch.models.heads import NetOutput
from vsearch.models.network import SearchNetwork


@dataclass
class Prediction:
    """``embeddings`` ``(n, d) float32`` L2-normalised; ``boxes`` ``(n, 4) float32`` fractions
    ``x0, y0, x1, y1`` of the image side; ``category_probs`` ``(n, c) float32`` (``c = 0``
    without a category head)."""

    embeddings: np.ndarray
    boxes: np.ndarray
    category_probs: np.ndarray


class Embedder:
    """Runs ``network`` on ``(H, W, 3) uint8`` images (or cached feature maps) in batches, always
    in eval mode (a network shared with a trainer is switched back before each call)."""

    def __init__(
        self,
        network: SearchNetwork,
        categories: list[str] | None = None,
        batch_size: int = 32,
        views: Sequence[float] = (1.0,),
        device: str | torch.device | None = None,
    ) -> None:
        """``device``: where the network's torch part runs ("cuda", "cpu"; None: where it is,
        so an embedder over a trainer's network never moves it)."""
        if device is not None:
            network = network.to(device)
        self.network = network.eval()
        first = next(self.network.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.spec = network.spec
        self.categories = list(categories or [])
        self.batch_size = batch_size
        self.views = tuple(views)

    @property
    def dim(self) -> int:
        return int(self.network.embed_dim)

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @torch.inference_mode()
    def feature_maps(self, images: list[np.ndarray]) -> np.ndarray:
        """Backbone maps of every view: ``(views, n, C, g, g) float32`` (what the cache stores)."""
        self.network.eval()
        spec = self.network.map_spec
        g, c = spec.grid, spec.channels
        out = np.empty((len(self.views), len(images), c, g, g), dtype=np.float32)
        for v, fraction in enumerate(self.views):
            for start in range(0, len(images), self.batch_size):
                chunk = [centre_crop(i, fraction) for i in images[start : start + self.batch_size]]
                x = self.spec.preprocess(chunk)
                if self.network.backbone is not None:  # a torch backbone (ONNX takes CPU input)
                    x = x.to(self.device)
                maps = self.network.feature_maps(x)
                out[v, start : start + len(chunk)] = maps.float().cpu().numpy()
        return out

    def predict(self, images: list[np.ndarray]) -> Prediction:
        """Embeddings, boxes and category probabilities of decoded images, in input order."""
        return self.predict_maps(self.feature_maps(images))

    @torch.inference_mode()
    def predict_maps(self, fmaps: np.ndarray) -> Prediction:
        """The same from backbone maps ``(views, n, C, g, g)`` (float16 or float32)."""
        fmaps = np.asarray(fmaps)
        if fmaps.ndim != 5 or fmaps.shape[0] != len(self.views):
            raise ValueError(
                f"expected maps of shape ({len(self.views)} views, n, C, g, g), got {fmaps.shape}"
            )
        self.network.eval()
        per_view = []
        for view_maps in fmaps:
            parts: list[NetOutput] = []
            for start in range(0, len(view_maps), self.batch_size):
                chunk = torch.from_numpy(np.asarray(view_maps[start : start + self.batch_size]))
                parts.append(self.network.forward_maps(chunk.float().to(self.device)))
            per_view.append(parts)
        return self._combine(per_view, fmaps.shape[1])

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """``(n, d) float32`` L2-normalised embeddings."""
        return self.predict(images).embeddings

    def _combine(self, per_view: list[list[NetOutput]], n: int) -> Prediction:
        if n == 0:
            c = len(self.categories)
            return Prediction(
                np.zeros((0, self.dim), "float32"), np.zeros((0, 4), "float32"), np.zeros((0, c))
            )
        emb = torch.stack([torch.cat([p.embedding for p in parts]) for parts in per_view])
        logits = torch.stack([torch.cat([p.category_logits for p in parts]) for parts in per_view])
        box = torch.cat([p.box for p in per_view[0]]).clamp(0, 1)
        mean = torch.nn.functional.normalize(emb.mean(dim=0), dim=1)
        probs = torch.softmax(logits, dim=2).mean(dim=0) if logits.shape[2] else logits[0]
        return Prediction(
            mean.cpu().numpy().astype(np.float32),
            box.cpu().numpy().astype(np.float32),
            probs.cpu().numpy().astype(np.float32),
        )
