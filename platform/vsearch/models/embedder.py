"""``Embedder``: a ``SearchNetwork`` plus its preprocessing and views, in eval mode, on numpy in and
out.

The one place images become embeddings, boxes and category probabilities: the reindex job, the
evaluation and the service all call it. With several views (centre crops) the backbone runs once
per view; the embedding is the normalised mean of the views' embeddings and the category
probabilities their mean, the box comes from the first view. A model with a box view
(``model.box_view``) then runs the backbone once more on the square around that box (detect, then
embed), and that view joins the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vsearch.imaging import box_crop, box_window, centre_crop, out_of_window
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
        box_margin: float | None = None,
        refine_box: bool = False,
    ) -> None:
        """``device``: where the network's torch part runs ("cuda", "cpu"; None: where it is,
        so an embedder over a trainer's network never moves it). ``box_margin``: embed a box
        view too (the square around the box predicted from the first view, this margin added
        on each side); None: no box view. ``refine_box`` (with a box view): report the box
        found in the box view, mapped back to the image, instead of the first view's."""
        if device is not None:
            network = network.to(device)
        self.network = network.eval()
        first = next(self.network.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.spec = network.spec
        self.categories = list(categories or [])
        self.batch_size = batch_size
        self.views = tuple(views)
        self.box_margin = box_margin
        self.refine_box = refine_box and box_margin is not None

    @property
    def dim(self) -> int:
        return int(self.network.embed_dim)

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @torch.inference_mode()
    def feature_maps(
        self,
        images: list[np.ndarray],
        progress: Callable[[int], None] | None = None,
        views: int | None = None,
    ) -> np.ndarray:
        """Backbone maps of every centre-crop view: ``(views, n, C, g, g) float32`` (what the
        cache stores; the box view, which depends on the heads, is not among them), or of the
        first ``views`` only. ``progress(m)`` is called as each batch of ``m`` crops has run
        (``views x n`` in all)."""
        fractions = self.views if views is None else self.views[:views]
        if not fractions:
            raise ValueError(f"views must be between 1 and {len(self.views)}, got {views}")
        spec = self.network.map_spec
        out = np.empty(
            (len(fractions), len(images), spec.channels, spec.grid, spec.grid), dtype=np.float32
        )
        for v, fraction in enumerate(fractions):
            out[v] = self._backbone([centre_crop(i, fraction) for i in images], progress)
        return out

    @torch.inference_mode()
    def box_maps(
        self,
        images: list[np.ndarray],
        boxes: np.ndarray,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Backbone maps ``(n, C, g, g) float32`` of the square around each image's box
        (``progress`` as in :meth:`feature_maps`)."""
        if self.box_margin is None:
            raise ValueError("this model has no box view (model.box_view is off)")
        return self._backbone(
            [box_crop(img, box, self.box_margin) for img, box in zip(images, boxes, strict=True)],
            progress,
        )

    def _backbone(
        self, crops: list[np.ndarray], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        self.network.eval()
        spec = self.network.map_spec
        out = np.empty((len(crops), spec.channels, spec.grid, spec.grid), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            x = self.spec.preprocess(chunk)
            if self.network.backbone is not None:  # a torch backbone (ONNX takes CPU input)
                x = x.to(self.device)
            out[start : start + len(chunk)] = self.network.feature_maps(x).float().cpu().numpy()
            if progress is not None:
                progress(len(chunk))
        return out

    def predict(self, images: list[np.ndarray]) -> Prediction:
        """Embeddings, boxes and category probabilities of decoded images, in input order."""
        return self.predict_maps(self.feature_maps(images), images=images)

    @torch.inference_mode()
    def predict_maps(
        self,
        fmaps: np.ndarray,
        images: list[np.ndarray] | None = None,
        box_maps: np.ndarray | None = None,
        shapes: Sequence[tuple[int, ...]] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Prediction:
        """The same from backbone maps ``(views, n, C, g, g)`` (float16 or float32). A model
        with a box view also needs the box view's maps ``(n, C, g, g)``, or the ``images`` to
        crop at the boxes predicted from the first view. A model that refines its boxes in the
        box view needs the images' ``shapes`` (or the images) to map them back; without them
        the first view's boxes are returned. ``progress(m)`` is called as each batch of ``m``
        maps has run through the heads (every view's, and the box view's) and, where the box
        view's maps are cropped from ``images`` here, as each batch of ``m`` box crops has run
        through the backbone: ``n x (views + 2)`` in all then, else ``n x (views + 1)`` with a
        box view and ``n x views`` without."""
        fmaps = np.asarray(fmaps)
        if fmaps.ndim != 5 or fmaps.shape[0] != len(self.views):
            raise ValueError(
                f"expected maps of shape ({len(self.views)} views, n, C, g, g), got {fmaps.shape}"
            )
        per_view = [self._heads(view_maps, progress) for view_maps in fmaps]
        refine_in: Sequence[tuple[int, ...]] | None = None  # shapes to map box-view boxes back
        if self.box_margin is not None and fmaps.shape[1]:
            if box_maps is None:
                if images is None:
                    raise ValueError(
                        "this model embeds a box view too: pass the images or their box maps"
                    )
                box_maps = self.box_maps(images, _boxes(per_view[0]), progress)
            per_view.append(self._heads(np.asarray(box_maps), progress))
            if self.refine_box:
                refine_in = shapes
                if refine_in is None and images is not None:
                    refine_in = [img.shape for img in images]
        return self._combine(per_view, fmaps.shape[1], refine_in)

    def boxes(self, fmaps: np.ndarray) -> np.ndarray:
        """Subject boxes ``(n, 4)`` predicted from maps of the first view ``(n, C, g, g)``."""
        return _boxes(self._heads(np.asarray(fmaps)))

    @torch.inference_mode()
    def _heads(
        self, view_maps: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> list[NetOutput]:
        self.network.eval()
        parts: list[NetOutput] = []
        for start in range(0, len(view_maps), self.batch_size):
            chunk = torch.from_numpy(np.asarray(view_maps[start : start + self.batch_size]))
            parts.append(self.network.forward_maps(chunk.float().to(self.device)))
            if progress is not None:
                progress(len(chunk))
        return parts

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """``(n, d) float32`` L2-normalised embeddings."""
        return self.predict(images).embeddings

    def _combine(
        self,
        per_view: list[list[NetOutput]],
        n: int,
        shapes: Sequence[tuple[int, ...]] | None = None,
    ) -> Prediction:
        """Mean embedding and category probabilities over the views; the first view's boxes,
        or (``shapes`` given) the box view's, mapped back to the images (the last view is
        then the box view)."""
        if n == 0:
            c = len(self.categories)
            return Prediction(
                np.zeros((0, self.dim), "float32"), np.zeros((0, 4), "float32"), np.zeros((0, c))
            )
        emb = torch.stack([torch.cat([p.embedding for p in parts]) for parts in per_view])
        logits = torch.stack([torch.cat([p.category_logits for p in parts]) for parts in per_view])
        mean = torch.nn.functional.normalize(emb.mean(dim=0), dim=1)
        probs = torch.softmax(logits, dim=2).mean(dim=0) if logits.shape[2] else logits[0]
        boxes = _boxes(per_view[0])
        if shapes is not None:
            margin = self.box_margin if self.box_margin is not None else 0.0
            inside = _boxes(per_view[-1])
            boxes = np.asarray(
                [
                    out_of_window(found, box_window(shape[0], shape[1], first, margin))
                    for found, first, shape in zip(inside, boxes, shapes, strict=True)
                ],
                dtype=np.float32,
            ).reshape(-1, 4)
        return Prediction(
            mean.cpu().numpy().astype(np.float32), boxes, probs.cpu().numpy().astype(np.float32)
        )


def _boxes(parts: list[NetOutput]) -> np.ndarray:
    """The boxes ``(n, 4) float32`` of one view's batched outputs, clipped to the image."""
    if not parts:
        return np.zeros((0, 4), np.float32)
    return torch.cat([p.box for p in parts]).clamp(0, 1).cpu().numpy().astype(np.float32)
