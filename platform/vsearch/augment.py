"""Training augmentation on normalised image batches, in plain torch (no torchvision).

``RandomAugment`` has two modes: ``basic`` (random resized crop, rotation, flip, brightness and
contrast) and ``composite`` (catalogue products cut from their white background and pasted onto
random clutter, to look like shoppers' photos).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vsearch.imaging import MEAN, STD


def _white(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normalised value of white, ``(1, 3, 1, 1)``."""
    return ((1 - MEAN) / STD).to(dtype)


def white_background_mask(
    x: torch.Tensor, tol: float = 0.08, border_share: float = 0.9
) -> torch.Tensor:
    """Which images of a normalised ``(n, 3, s, s)`` batch are shot on white: ``(n,) bool``.

    True when at least ``border_share`` of the one-pixel frame is within ``tol`` of white in every
    channel (catalogue images are; real-shot photos, with their cluttered backgrounds, are not).
    """
    near = ((x * STD + MEAN) > 1 - tol).all(dim=1)  # (n, s, s)
    frame = torch.cat([near[:, 0], near[:, -1], near[:, :, 0], near[:, :, -1]], dim=1)
    return frame.float().mean(dim=1) >= border_share


def foreground_alpha(x: torch.Tensor, tol: float = 0.08) -> torch.Tensor:
    """Soft foreground alpha ``(n, 1, s, s)`` in [0, 1] of normalised images on white.

    The background is the near-white region connected to the image border (a flood fill by
    repeated 3x3 dilation), so white parts inside the product (labels, highlights) stay opaque.
    """
    near = ((x * STD + MEAN) > 1 - tol).all(dim=1, keepdim=True).float()
    seed = torch.zeros_like(near)
    seed[..., 0, :] = seed[..., -1, :] = seed[..., :, 0] = seed[..., :, -1] = 1
    bg = seed * near
    for i in range(x.shape[-1]):
        grown = F.max_pool2d(bg, 3, 1, 1) * near
        if i % 4 == 3 and torch.equal(grown, bg):
            break
        bg = grown
    alpha = 1 - bg
    # Feather the edge a little: JPEG fringes and resampling make the true edge soft anyway.
    return F.avg_pool2d(alpha, 3, 1, 1, count_include_pad=False)


def random_backgrounds(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cluttered scenes in [0, 1], ``(n, 3, size, size)``: a wall and a table of muted colours,
    low-frequency blotches, a few rectangles, ellipses and bars, sometimes out of focus."""

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    def muted(lo: float, hi: float) -> torch.Tensor:
        c, grey = rand(n, 3, 1, 1), 0.27 + 0.55 * rand(n, 1, 1, 1)
        sat = lo + (hi - lo) * rand(n, 1, 1, 1)
        return (grey + (c - c.mean(1, keepdim=True)) * sat).clamp(0, 1)

    ys = torch.linspace(0, 1, size).view(1, 1, size, 1)
    xs = torch.linspace(0, 1, size).view(1, 1, 1, size)
    horizon = (0.3 + 0.55 * rand(n, 1, 1, 1)).expand(n, 1, 1, 1)
    out = torch.where(ys < horizon, muted(0.15, 0.6), muted(0.2, 0.7))
    out = out.expand(n, 3, size, size).clone()
    blot = 0.08 * torch.randn(n, 1, 6, 6, generator=generator)
    blot = blot + 0.03 * torch.randn(n, 3, 6, 6, generator=generator)
    out += F.interpolate(blot, size=(size, size), mode="bicubic", align_corners=False)
    for _ in range(6):
        cx, cy = rand(n, 1, 1, 1) * 1.1 - 0.05, rand(n, 1, 1, 1) * 1.1 - 0.05
        w, h = 0.04 + 0.25 * rand(n, 1, 1, 1), 0.04 + 0.25 * rand(n, 1, 1, 1)
        kind = rand(n, 1, 1, 1)
        box = ((xs - cx).abs() < w) & ((ys - cy).abs() < h)
        ell = ((xs - cx) / w) ** 2 + ((ys - cy) / h) ** 2 < 1
        bar = ((xs - cx) * h - (ys - cy) * w).abs() < 0.02 * (w * w + h * h).sqrt()
        bar &= ((xs - cx).abs() < w) & ((ys - cy).abs() < h)
        shape = torch.where(kind < 0.4, box, torch.where(kind < 0.8, ell, bar))
        present = rand(n, 1, 1, 1) < 0.75
        out = torch.where(shape & present, muted(0.2, 0.85), out)
    soft = F.avg_pool2d(out, 3, 1, 1, count_include_pad=False)
    out = torch.where(rand(n, 1, 1, 1) < 0.5, soft, out)
    return out.clamp(0, 1)


class RandomAugment:
    """Training augmentation on a normalised ``(n, 3, s, s)`` batch, in plain torch.

    ``mode="basic"``: random resized crop (area ``scale``, aspect 3/4..4/3) with rotation,
    horizontal flip and a brightness/contrast jitter; the area outside the source is white.

    ``mode="composite"`` also bridges the catalogue -> real-shot gap: each image shot on white
    (``white_background_mask``) is, with probability ``paste_prob``, cut out along its white
    background and pasted, smaller (longer side ``paste_cover`` of the frame), rotated and moved,
    onto a random cluttered scene (``random_backgrounds``); others get the basic geometry with
    edge padding. Then every image gets, besides brightness/contrast, a colour cast, a light
    gradient, sometimes an occluding blob, a blur and sensor noise.

    Seeded through the ``generator`` passed to ``__call__``.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.5, 1.0),
        max_rotation_deg: float = 20.0,
        jitter: float = 0.3,
        flip: bool = True,
        mode: str = "basic",
        paste_prob: float = 0.6,
        paste_cover: tuple[float, float] = (0.35, 0.8),
        occlude_prob: float = 0.3,
        blur_prob: float = 0.3,
    ) -> None:
        if mode not in ("basic", "composite"):
            raise ValueError(f"unknown augmentation mode {mode!r}")
        self.scale = scale
        self.max_rotation = math.radians(max_rotation_deg)
        self.jitter = jitter
        self.flip = flip
        self.mode = mode
        self.paste_prob = paste_prob
        self.paste_cover = paste_cover
        self.occlude_prob = occlude_prob
        self.blur_prob = blur_prob

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.mode == "basic":
            return self._basic(x, generator)
        return self._composite(x, generator)

    def _theta(
        self, n: int, sx: torch.Tensor, sy: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Affine sampling matrices ``(n, 2, 3)``: scale ``sx, sy`` (output -> source), a random
        rotation, flip and a shift keeping the sampled window inside ``[-1, 1]`` where it fits."""

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        tx = (1 - sx) * uniform(-1, 1)
        ty = (1 - sy) * uniform(-1, 1)
        angle = uniform(-self.max_rotation, self.max_rotation)
        cos, sin = torch.cos(angle), torch.sin(angle)
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        if not self.flip:
            flip = torch.ones(n)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = cos * sx * flip
        theta[:, 0, 1] = -sin * sy
        theta[:, 1, 0] = sin * sx * flip
        theta[:, 1, 1] = cos * sy
        theta[:, 0, 2] = tx
        theta[:, 1, 2] = ty
        return theta

    def _crop_scales(
        self, n: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        area = uniform(*self.scale)
        ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
        return torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)

    def _brightness_contrast(
        self, out: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        n = out.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        brightness = uniform(-self.jitter, self.jitter).view(n, 1, 1, 1)
        contrast = (1 + uniform(-self.jitter, self.jitter)).view(n, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        return (out - mean) * contrast + mean + brightness

    def with_boxes(
        self, x: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``x`` and move its subject ``boxes`` ``(n, 4)`` (fractions ``x0, y0, x1, y1``;
        NaN rows unknown) with it: each box becomes the bounding box of its transformed corners,
        clipped to the frame. ``composite`` mode returns NaN boxes (the paste moves the subject)."""
        if self.mode != "basic":
            return self._composite(x, generator), torch.full_like(boxes, float("nan"))
        out, theta = self._basic_with_theta(x, generator)
        return out, transform_boxes(boxes, theta)

    def _basic(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self._basic_with_theta(x, generator)[0]

    def _basic_with_theta(
        self, x: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        sx, sy = self._crop_scales(n, generator)
        theta = self._theta(n, sx, sy, generator)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Fill outside the source with the normalised value of white (catalogue backgrounds).
        white = _white(x.dtype)
        out = F.grid_sample(x - white, grid, "bilinear", "zeros", align_corners=False) + white
        return self._brightness_contrast(out, generator), theta

    def _composite(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, size = x.shape[0], x.shape[-1]

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator)

        # Every random draw happens for every image, whichever branch it takes: the stream of
        # random numbers (and so the result) depends only on the generator and the batch size.
        paste = white_background_mask(x) & (rand(n) < self.paste_prob)
        # Geometry. Pasted: zoom out so the product (86% of a catalogue frame) covers
        # ``paste_cover``; others: the basic random resized crop.
        cover = self.paste_cover[0] + (self.paste_cover[1] - self.paste_cover[0]) * rand(n)
        zoom = 0.86 / cover
        squash = torch.exp((rand(n) - 0.5) * 0.2)
        cx, cy = self._crop_scales(n, generator)
        sx = torch.where(paste, zoom * squash, cx)
        sy = torch.where(paste, zoom / squash, cy)
        theta = self._theta(n, sx, sy, generator)
        # Pasted products may sit anywhere that keeps most of them in frame.
        room = (zoom - 0.86).clamp(min=0)
        shift = (rand(n, 2) * 2 - 1) * room.unsqueeze(1)
        theta[:, :, 2] = torch.where(paste.unsqueeze(1), shift, theta[:, :, 2])
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        white = _white(x.dtype)
        moved = F.grid_sample(x, grid, "bilinear", "border", align_corners=False)
        backgrounds = (random_backgrounds(n, size, generator) - MEAN) / STD
        if bool(paste.any()):
            idx = paste.nonzero().squeeze(1)
            alpha = foreground_alpha(x[idx])
            alpha = F.grid_sample(alpha, grid[idx], "bilinear", "zeros", align_corners=False)
            fg = F.grid_sample(x[idx] - white, grid[idx], "bilinear", "zeros", align_corners=False)
            fg = fg + white
            moved = moved.clone()
            moved[idx] = alpha * fg + (1 - alpha) * backgrounds[idx]
        out = moved
        # Occlusion: a blob of random colour over one side of the subject.
        ys = torch.linspace(-1, 1, size).view(1, 1, size, 1)
        xs = torch.linspace(-1, 1, size).view(1, 1, 1, size)
        ox, oy = (rand(n, 1, 1, 1) * 1.2 - 0.6), (rand(n, 1, 1, 1) * 1.2 - 0.6)
        ow, oh = 0.1 + 0.25 * rand(n, 1, 1, 1), 0.1 + 0.3 * rand(n, 1, 1, 1)
        blob = torch.where(
            rand(n, 1, 1, 1) < 0.5,
            ((xs - ox) / ow) ** 2 + ((ys - oy) / oh) ** 2 < 1,
            ((xs - ox).abs() < ow) & ((ys - oy).abs() < oh),
        )
        blob_colour = (rand(n, 3, 1, 1) - MEAN) / STD
        occlude = (rand(n) < self.occlude_prob).view(n, 1, 1, 1)
        out = torch.where(blob & occlude, blob_colour, out)
        # Lighting: brightness/contrast, a colour cast and a light gradient.
        out = self._brightness_contrast(out, generator)
        cast = (0.88 + 0.24 * rand(n, 3, 1, 1)) / STD
        angle = rand(n, 1, 1, 1) * 2 * math.pi
        gradient = 0.2 * rand(n, 1, 1, 1) * (xs * torch.cos(angle) + ys * torch.sin(angle))
        out = out + (cast - 1 / STD) * (out * STD + MEAN) + gradient / STD
        # Optics and sensor: a blur, then noise.
        soft = F.avg_pool2d(out, 3, 1, 1, count_include_pad=False)
        blur = (rand(n) < self.blur_prob).view(n, 1, 1, 1) * rand(n, 1, 1, 1)
        out = out + blur * (soft - out)
        noise = torch.randn(out.shape, generator=generator) * (0.025 * rand(n, 1, 1, 1)) / STD
        return out + noise


def transform_boxes(boxes: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Boxes ``(n, 4)`` (fractions of the source) seen through ``affine_grid`` matrices ``theta``
    ``(n, 2, 3)`` (output -> source, in [-1, 1] coordinates): the bounding boxes of the mapped
    corners in the output, clipped to [0, 1]. NaN rows stay NaN."""
    x0, y0, x1, y1 = (2 * boxes[:, i] - 1 for i in range(4))
    corners = torch.stack(
        [torch.stack([x0, y0]), torch.stack([x1, y0]), torch.stack([x0, y1]), torch.stack([x1, y1])]
    ).permute(2, 1, 0)  # (n, 2, 4)
    a, t = theta[:, :, :2], theta[:, :, 2:]
    out = torch.linalg.solve(a, corners - t)  # source = a @ output + t
    lo, hi = out.amin(dim=2), out.amax(dim=2)
    mapped = torch.cat([lo, hi], dim=1)
    return ((mapped + 1) / 2).clamp(0, 1)
