"""The synthetic catalogue: procedurally drawn products, real-shot views, a click log, duplicates.

``generate_synthetic(cfg)`` is seeded and deterministic: every random choice comes from a numpy
generator seeded with ``(cfg.seed, stage, index...)``, so the same config gives byte-identical JPEGs
and identical tables. Each category is one shape family (``vsearch.data.drawing.FAMILIES``); the
products of a category share the silhouette and differ by colours, pattern, printed brand and small
proportion changes, so telling them apart is not trivial.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from vsearch.config import SyntheticConfig
from vsearch.data import drawing
from vsearch.data.dataset import CatalogDataset
from vsearch.data.drawing import FAMILIES, PALETTE, PATTERNS, ProductStyle, Sprite
from vsearch.schema import CATALOG_SCHEMA, CLICK_SCHEMA, DUPLICATE_SCHEMA, QUERY_SCHEMA

__all__ = ["GeneratedCatalog", "generate_synthetic"]

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
#: Share of the non-true products shown in a session drawn from the query's category.
_SAME_CATEGORY_SHOWN = 0.75
_LABELS = ((246, 246, 242), (240, 230, 200), (28, 28, 30), (250, 215, 60))
_SUFFIXES = ("NEW", "2-pack", "Value Pack", "(Best Seller)", "- Free Shipping", "NEW!")
_WATERMARKS = ("SAMPLE", "SHOPMART", "DEALS24", "BESTBUYZ", "MEGASTORE", "OUTLET")
Rng = np.random.Generator


@dataclass
class GeneratedCatalog:
    """A generated dataset and its images.

    ``images`` maps every ``image_uri`` in ``dataset``'s tables (paths relative to the dataset
    folder, e.g. ``images/catalog/c000017.jpg``) to the JPEG bytes of an ``image_size`` square RGB
    image.
    """

    dataset: CatalogDataset
    images: dict[str, bytes]


@dataclass
class _Product:
    index: int
    category: str
    cat_index: int
    title: str
    attributes: str
    style: ProductStyle


def _brand(rng: Rng) -> str:
    """A pronounceable uppercase word of 3 to 6 letters."""
    n = int(rng.integers(3, 7))
    return "".join(
        str(rng.choice(list("AEIOU" if i % 2 else "BCDFGHKLMNPRSTVZ"))) for i in range(n)
    )


def _style(rng: Rng, fam: str, shape: float, taken: set, brands: set) -> tuple[ProductStyle, str]:
    """A product's look and colour name, unique in (colour, secondary, pattern) per category."""
    for _ in range(100):
        ci, si, ai = (int(v) for v in rng.choice(len(PALETTE), 3, replace=False))
        pattern = str(rng.choice(PATTERNS))
        key = (ci, si if pattern != "Plain" else -1, pattern)
        if key not in taken:
            break
    taken.add(key)
    brand = _brand(rng)
    while brand in brands:
        brand = _brand(rng)
    brands.add(brand)
    label = _LABELS[int(rng.integers(len(_LABELS)))]
    ink = (250, 250, 250) if sum(label) < 300 else (25, 25, 30)
    ink = PALETTE[ci][1] if sum(PALETTE[ci][1]) < 400 and sum(label) >= 300 else ink
    jit = np.clip(np.add([PALETTE[ci][1], PALETTE[si][1]], rng.integers(-14, 15, (2, 3))), 0, 255)
    colour, secondary = (tuple(int(v) for v in c) for c in jit)
    period, phase = float(rng.uniform(0.06, 0.14)), float(rng.uniform(0, 1))
    aspect, height = float(shape * rng.uniform(0.88, 1.12)), float(rng.uniform(0.93, 1.03))
    return ProductStyle(
        fam, brand, colour, secondary, PALETTE[ai][1], label, ink, pattern, period, phase,
        aspect, height,
    ), PALETTE[ci][0]  # fmt: skip


def _products(cfg: SyntheticConfig) -> list[_Product]:
    """Plan every product (no drawing). Families repeat, with a suffix, past the 16th category."""
    products: list[_Product] = []
    brands: set[str] = set()
    keys = list(FAMILIES)
    for c in range(cfg.categories):
        fam = FAMILIES[keys[c % len(keys)]]
        path = fam.category + (f"-{c // len(keys) + 1}" if c >= len(keys) else "")
        shape = float(np.random.default_rng([cfg.seed, 0, c]).uniform(0.85, 1.15))
        shape = 1.0 if c < len(keys) else shape
        taken: set = set()
        for _ in range(cfg.products_per_category):
            i = len(products)
            rng = np.random.default_rng([cfg.seed, 1, i])
            st, colour = _style(rng, fam.key, shape, taken, brands)
            size = rng.choice(fam.sizes.split("|"))
            title = f"{st.brand} {colour} {st.pattern} {fam.noun} {size}"
            attrs = {"brand": st.brand, "colour": colour, "pattern": st.pattern, "family": fam.key}
            products.append(_Product(i, path, c, title, json.dumps(attrs), st))
    return products


def _jpeg(img: np.ndarray | Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(
        buf, "JPEG", quality=quality
    )
    return buf.getvalue()


def _warp(sprite: Sprite, h0: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Map ``sprite`` by ``h0`` (3x3, level-0 pixels -> output pixels) into a ``size`` square.

    Returns premultiplied RGB ``(size, size, 3)`` and alpha ``(size, size)``, float32 in [0, 1],
    sampled from the pyramid level just finer than the output scale (little aliasing).
    """
    scale, k = float(np.sqrt(abs(np.linalg.det(h0[:2, :2])))), 0
    while k + 1 < len(sprite.levels) and scale * 2 ** (k + 1) <= 1.15:
        k += 1
    inv = np.linalg.inv(h0 @ np.diag([2.0**k, 2.0**k, 1.0]))
    data = tuple((inv / inv[2, 2]).flatten()[:8])
    how = (Image.Transform.PERSPECTIVE, data, Image.Resampling.BICUBIC)
    rgb, alpha = (
        np.asarray(im.transform((size, size), *how), np.float32) for im in sprite.levels[k]
    )
    return rgb / 255, alpha / 255


def _catalog_image(sprite: Sprite, size: int) -> np.ndarray:
    """The product centred on white, its longer side 86% of the frame; ``(size, size, 3) uint8``."""
    x0, y0, x1, y1 = sprite.box0
    s = 0.86 * size / max(x1 - x0, y1 - y0)
    tx, ty = size / 2 - s * (x0 + x1) / 2, size / 2 - s * (y0 + y1) / 2
    rgb, a = _warp(sprite, np.array([[s, 0, tx], [0, s, ty], [0, 0, 1]]), size)
    return np.clip((rgb + (1 - a[..., None])) * 255 + 0.5, 0, 255).astype(np.uint8)


def _muted(rng: Rng, lo: float, hi: float) -> np.ndarray:
    """A random colour with saturation between ``lo`` and ``hi``; ``(3,) float32``."""
    c, grey = rng.uniform(0, 255, 3), rng.uniform(70, 210)
    return np.clip(grey + (c - c.mean()) * rng.uniform(lo, hi), 0, 255).astype(np.float32)


def _background(size: int, rng: Rng) -> np.ndarray:
    """A cluttered scene (wall, table, blotches, coloured shapes); ``(size, size, 3)`` in [0, 1]."""
    arr = np.empty((size, size, 3), np.float32)
    horizon = int(rng.uniform(0.3, 0.85) * size)
    arr[:horizon], arr[horizon:] = _muted(rng, 0.15, 0.6), _muted(rng, 0.2, 0.7)
    blot = (rng.normal(0, 20, (6, 6, 1)) + rng.normal(0, 7, (6, 6, 3))).astype(np.float32)
    for ch in range(3):
        up = Image.fromarray(blot[..., ch], "F").resize((size, size), Image.Resampling.BICUBIC)
        arr[..., ch] += np.asarray(up)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 10))):
        colour = tuple(int(v) for v in _muted(rng, 0.2, 0.85))
        (x, y), (w, h) = rng.uniform(-0.1, 1.0, 2) * size, rng.uniform(0.08, 0.5, 2) * size
        kind, width = int(rng.integers(4)), max(1, int(rng.uniform(0.01, 0.04) * size))
        if kind == 0:
            d.rectangle((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            d.ellipse((x, y, x + w, y + h), fill=colour)
        elif kind == 2:
            d.polygon([tuple(p) for p in rng.uniform(-0.1, 1.1, (3, 2)) * size], fill=colour)
        else:
            d.line((x, y, x + w, y + h - 0.3 * size), fill=colour, width=width)
    if rng.random() < 0.5:  # depth of field
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0) * size / 128))
    return np.asarray(img, np.float32) / 255


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map sending the 4 points ``src`` ``(4, 2)`` onto ``dst`` ``(4, 2)``."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        a += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        b += [u, v]
    return np.append(np.linalg.solve(np.array(a, float), np.array(b, float)), 1.0).reshape(3, 3)


def _place(sprite: Sprite, size: int, rng: Rng) -> np.ndarray:
    """A random homography: scale (longer side 35-80% of the frame), rotation (+-25 deg), shear,
    squash, corner jitter (perspective) and a position keeping the subject mostly in frame."""
    x0, y0, x1, y1 = sprite.box0
    src = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    frac, t, sq = rng.uniform(0.35, 0.8), np.deg2rad(rng.uniform(-25, 25)), rng.uniform(0.9, 1.1)
    s = frac * size / max(x1 - x0, y1 - y0)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    lin = rot @ np.array([[1, rng.uniform(-0.15, 0.15)], [0, 1]]) @ np.diag([s * sq, s / sq])
    dst = (src - src.mean(0)) @ lin.T + rng.normal(0, 0.035 * frac * size, (4, 2))
    half = np.abs(dst).max(0)
    lo, hi = half * 0.85, size - half * 0.85
    centre = np.where(lo < hi, lo + rng.uniform(0, 1, 2) * np.maximum(hi - lo, 0), size / 2)
    return _homography(src, dst + centre)


def _view(sprite: Sprite, size: int, rng: Rng) -> tuple[np.ndarray, list[float]]:
    """A real-shot photo of ``sprite`` and its subject box: ``(size, size, 3) uint8``, 4 floats."""
    bg = _background(size, rng)
    rgb, a = _warp(sprite, _place(sprite, size, rng), size)
    if rng.random() < 0.6:  # soft contact shadow
        sh = Image.fromarray((a * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 32))
        off = (rng.uniform(-0.05, 0.05, 2) * size).astype(int)
        shadow = np.roll(np.asarray(sh, np.float32) / 255, (off[1], off[0]), (0, 1))
        bg = bg * (1 - rng.uniform(0.2, 0.5) * shadow[..., None])
    ys, xs = np.nonzero(a > 0.5)
    if xs.size == 0:  # not reachable with _place's framing; keeps the box valid regardless
        ys, xs = np.array([size // 2]), np.array([size // 2])
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    img = Image.fromarray(
        np.clip((bg * (1 - a[..., None]) + rgb) * 255 + 0.5, 0, 255).astype(np.uint8)
    )
    if rng.random() < 0.35:  # partial occlusion: an object over one side of the subject
        bw, bh = box[2] - box[0], box[3] - box[1]
        ow, oh = rng.uniform(0.25, 0.5) * bw, rng.uniform(0.25, 0.6) * bh
        ox = box[0] + rng.choice([-0.5 * ow, bw - 0.5 * ow, rng.uniform(0, bw - ow)])
        oy = box[1] + rng.uniform(-0.3 * oh, bh - 0.7 * oh)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        d = ImageDraw.Draw(img)
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((ox, oy, ox + ow, oy + oh), fill=colour)
    arr = np.asarray(img, np.float32)  # lighting: contrast, brightness, light gradient, colour cast
    mean, ramp = arr.mean(), np.linspace(-1, 1, size, dtype=np.float32)
    arr = (arr - mean) * rng.uniform(0.75, 1.25) + mean * rng.uniform(0.7, 1.25)
    light = rng.uniform(0, 2 * np.pi)
    g = 1 + rng.uniform(0, 0.2) * (ramp[None, :] * np.cos(light) + ramp[:, None] * np.sin(light))
    arr = arr * g[..., None] * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    arr += rng.normal(0, rng.uniform(0, 6), arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2) * size / 128))
    return np.asarray(img), box


def _watermark(img: Image.Image, rng: Rng) -> Image.Image:
    """``img`` with a semi-transparent rotated shop name (and sometimes a corner logo) on it."""
    size, out = img.width, img.copy()
    m = drawing.text_mask(
        str(rng.choice(_WATERMARKS)), int(size * rng.uniform(0.55, 0.8)), size // 6
    )
    m = m.rotate(float(rng.uniform(-30, 30)), expand=True, resample=Image.Resampling.BICUBIC)
    m = Image.fromarray((np.asarray(m, np.float32) * rng.uniform(0.3, 0.55)).astype(np.uint8))
    dx, dy = (int(v) for v in rng.integers(-size // 8, size // 8 + 1, 2))
    pos = ((size - m.width) // 2 + dx, (size - m.height) // 2 + dy)
    out.paste((120, 120, 120) if rng.random() < 0.5 else (30, 30, 30), pos, mask=m)
    if rng.random() < 0.5:
        logo, r = Image.new("L", (size, size), 0), size // 5
        ImageDraw.Draw(logo).ellipse((size - r - 3, size - r - 3, size - 3, size - 3), fill=110)
        out.paste((200, 30, 30), (0, 0), mask=logo)
    return out


def _edit_title(title: str, rng: Rng) -> str:
    """A re-uploader's copy of ``title``: a typo, two swapped words and/or an added suffix."""
    words = title.split()
    for op in rng.choice(["typo", "reorder", "suffix"], int(rng.integers(1, 3)), replace=False):
        cands = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
        if op == "typo" and cands:
            i = int(rng.choice(cands))
            w, j = words[i], int(rng.integers(1, len(words[i]) - 1))
            swap = rng.random() < 0.5
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if swap else w[:j] + w[j + 1 :]
        elif op == "reorder" and len(words) >= 3:
            i = int(rng.integers(1, len(words) - 1))
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            words.append(str(rng.choice(_SUFFIXES)))
    out = " ".join(words)
    return out if out != title else f"{title} NEW"


def _duplicates(
    cfg: SyntheticConfig, products: list[_Product], images: dict[str, bytes]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Re-uploads of distinct originals: (catalogue rows, duplicate rows); adds their images."""
    rng, size = np.random.default_rng([cfg.seed, 4]), cfg.image_size
    rows, dups = [], []
    for j, o in enumerate(rng.choice(len(products), min(cfg.duplicates, len(products)), False)):
        orig = products[int(o)]
        kind = str(rng.choice(["crop", "watermark", "crop+watermark"]))
        img = Image.open(io.BytesIO(images[f"images/catalog/c{orig.index:06d}.jpg"])).convert("RGB")
        if "crop" in kind:
            w = round(size * rng.uniform(0.7, 0.9))
            x0, y0 = (int(v) for v in rng.integers(0, size - w + 1, 2))
            img = img.crop((x0, y0, x0 + w, y0 + w)).resize((size, size), Image.Resampling.LANCZOS)
        if "watermark" in kind:
            img = _watermark(img, rng)
        title = orig.title
        if rng.random() < 0.7:
            title, kind = _edit_title(title, rng), kind + "+title_edit"
        pid, image_id = f"d{j:06d}", f"cd{j:06d}"
        uri = f"images/catalog/{image_id}.jpg"
        images[uri] = _jpeg(img, int(rng.integers(75, 96)))
        rows.append(
            {"product_id": pid, "image_id": image_id, "image_uri": uri, "category": orig.category,
             "title": title, "attributes": orig.attributes, "quality": rng.beta(3, 3),
             "popularity": rng.beta(1.2, 6)}
        )  # fmt: skip
        dups.append({"product_id": pid, "duplicate_of": f"p{orig.index:06d}", "kind": kind})
    return rows, dups


def _clicks(cfg: SyntheticConfig, train: list[tuple[str, str, int]], cats: list[int]) -> pa.Table:
    """One session per train view ``(query_id, image_uri, product index)``; ``cats[i]``: category
    index of product ``i``. Shows ``min(shown_per_click, products)`` distinct products."""
    rng = np.random.default_rng([cfg.seed, 3])
    n = len(cats)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cats):
        members.setdefault(c, []).append(i)
    rows = []
    for k, (qid, uri, true) in enumerate(train):
        chosen = [true]
        while len(chosen) < min(cfg.shown_per_click, n):
            same = [p for p in members[cats[true]] if p not in chosen]
            p = int(rng.choice(same)) if same and rng.random() < _SAME_CATEGORY_SHOWN else true
            while p in chosen:  # otherwise (or if taken) any product not shown yet
                p = int(rng.integers(n))
            chosen.append(p)
        shown = [chosen[i] for i in rng.permutation(len(chosen))]
        clicked = true
        if rng.random() >= cfg.click_accuracy:
            others = [p for p in shown if p != true and cats[p] == cats[true]]
            clicked = int(rng.choice(others or [p for p in shown if p != true]))
        rows.append(
            {"query_id": qid, "query_image_uri": uri,
             "shown_product_ids": [f"p{p:06d}" for p in shown],
             "clicked_product_id": f"p{clicked:06d}", "timestamp": _EPOCH + timedelta(minutes=k)}
        )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=CLICK_SCHEMA)


def generate_synthetic(
    cfg: SyntheticConfig, progress: Callable[[int, int], None] | None = None
) -> GeneratedCatalog:
    """Draw the catalogue described by ``cfg``; ``progress(done, total)`` is called per product.

    Products ``p000000...`` (catalogue image ``images/catalog/c000000.jpg``: white background, JPEG
    quality 95), ``cfg.views_per_product`` real-shot views each (``images/views/q000000_0.jpg``,
    JPEG quality 40-90; the last ``cfg.test_views_per_product`` in split "test", the others
    "train"; ``box`` is the subject's ``[x0, y0, x1, y1]`` in pixels), one click session per train
    view (at ``2026-01-01T00:00Z`` + i minutes) and ``min(cfg.duplicates, products)`` re-uploaded
    listings ``d000000...`` of distinct originals, recorded in the duplicates table. ``total`` is
    the number of products; the duplicates are made after the last ``progress`` call.
    """
    size, products = cfg.image_size, _products(cfg)
    images: dict[str, bytes] = {}
    catalog, queries, train = [], [], []
    n_train = cfg.views_per_product - cfg.test_views_per_product
    for p in products:
        pid = f"p{p.index:06d}"
        sprite, uri = drawing.render(p.style, size), f"images/catalog/c{p.index:06d}.jpg"
        images[uri] = _jpeg(_catalog_image(sprite, size), 95)
        rng = np.random.default_rng([cfg.seed, 2, p.index])
        catalog.append(
            {"product_id": pid, "image_id": f"c{p.index:06d}", "image_uri": uri,
             "category": p.category, "title": p.title, "attributes": p.attributes,
             "quality": rng.beta(5, 2), "popularity": rng.beta(1.5, 4)}
        )  # fmt: skip
        for v in range(cfg.views_per_product):
            vrng = np.random.default_rng([cfg.seed, 5, p.index, v])
            arr, box = _view(sprite, size, vrng)
            qid = f"q{p.index:06d}_{v}"
            vuri = f"images/views/{qid}.jpg"
            images[vuri] = _jpeg(arr, int(vrng.integers(40, 91)))
            split = "train" if v < n_train else "test"
            queries.append(
                {"query_id": qid, "product_id": pid, "image_uri": vuri, "category": p.category,
                 "split": split, "box": box}
            )  # fmt: skip
            if split == "train":
                train.append((qid, vuri, p.index))
        if progress is not None:
            progress(p.index + 1, len(products))
    dup_rows, dups = _duplicates(cfg, products, images)
    dataset = CatalogDataset(
        catalog=pa.Table.from_pylist(catalog + dup_rows, schema=CATALOG_SCHEMA),
        queries=pa.Table.from_pylist(queries, schema=QUERY_SCHEMA),
        clicks=_clicks(cfg, train, [p.cat_index for p in products]),
        duplicates=pa.Table.from_pylist(dups, schema=DUPLICATE_SCHEMA),
    )
    return GeneratedCatalog(dataset=dataset, images=images)
