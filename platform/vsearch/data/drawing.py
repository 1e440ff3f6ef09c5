"""Drawing primitives for the synthetic catalogue: shape families, patterns, brand text.

A product is drawn at ``SUPERSAMPLE`` times the image size on a transparent canvas, shaded, then
box-reduced into a small pyramid of premultiplied ``(RGB, alpha)`` pairs, ready to be warped into a
scene. Pure numpy + Pillow and deterministic: the same ``ProductStyle`` always gives the same
pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]

#: Named body colours (the name goes into titles and attributes).
PALETTE: tuple[tuple[str, RGB], ...] = (
    ("Red", (200, 32, 40)), ("Blue", (35, 85, 205)), ("Green", (40, 150, 65)),
    ("Yellow", (240, 200, 35)), ("Orange", (240, 125, 25)), ("Purple", (120, 55, 165)),
    ("Pink", (240, 125, 175)), ("Black", (32, 32, 38)), ("White", (236, 236, 232)),
    ("Grey", (130, 132, 138)), ("Brown", (122, 78, 42)), ("Teal", (22, 140, 140)),
    ("Navy", (22, 38, 92)), ("Beige", (215, 195, 150)),
)  # fmt: skip
#: Surface patterns; the name goes into titles ("Plain" is a single colour).
PATTERNS: tuple[str, ...] = (
    "Plain", "Striped", "Pinstriped", "Diagonal", "Dotted", "Checked", "Banded", "Gradient",
    "Chevron",
)  # fmt: skip
#: Drawing supersampling factor (anti-aliasing by box reduction).
SUPERSAMPLE = 2
#: Fixed part colours, usable in drawing ops beside the ``ProductStyle`` colour fields.
_FIXED: dict[str, RGB] = {
    "silver": (200, 202, 208), "dark": (38, 38, 44), "paper": (240, 232, 210),
    "inside": (60, 45, 35),
}  # fmt: skip


@dataclass(frozen=True)
class ProductStyle:
    """Everything that decides how one product looks. Colours are RGB ``uint8`` triples."""

    family: str
    brand: str
    colour: RGB
    secondary: RGB
    accent: RGB
    label: RGB
    ink: RGB
    pattern: str
    #: Pattern period as a fraction of the canvas side, and its phase in [0, 1).
    period: float
    phase: float
    #: Width and height factors of the silhouette (small shape variations around 1).
    aspect: float
    height: float


@dataclass
class Sprite:
    """A drawn product: ``levels[k]`` is ``(premultiplied RGB, alpha L)`` reduced by ``2**k``.

    Level 0 is ``SUPERSAMPLE * size`` square; ``box0`` is the product's ``[x0, y0, x1, y1]`` there.
    """

    levels: list[tuple[Image.Image, Image.Image]]
    box0: Box


def shade(c: RGB, f: float) -> RGB:
    """``c`` scaled by ``f`` (darker below 1, lighter above), clipped to ``[0, 255]``."""
    return tuple(int(min(255, max(0, round(v * f)))) for v in c)  # type: ignore[return-value]


@lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font.
        return ImageFont.load_default()


def text_mask(text: str, width: int, height: int) -> Image.Image:
    """An ``L`` mask ``(height, width)`` with ``text`` (default font) fitted and centred in it."""
    font = _font(max(8, int(height * 1.4)))
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    tmp = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    ImageDraw.Draw(tmp).text((-x0, -y0), text, fill=255, font=font)
    k = min(width / tmp.width, height / tmp.height)
    tw, th = max(1, int(tmp.width * k)), max(1, int(tmp.height * k))
    out = Image.new("L", (width, height), 0)
    pos = ((width - tw) // 2, (height - th) // 2)
    out.paste(tmp.resize((tw, th), Image.Resampling.LANCZOS), pos)
    return out


class _Canvas:
    """Executes a family's drawing ops in unit coordinates, scaled by the style's proportions."""

    def __init__(self, style: ProductStyle, side: int, rigid: bool) -> None:
        self.s, self.w = style, side
        self.rgb = Image.new("RGB", (side, side), (255, 255, 255))
        self.alpha, self.body = Image.new("L", (side, side), 0), Image.new("L", (side, side), 0)
        self.pattern = Image.fromarray(_pattern(style, side))
        self.ax, self.ay = (1.0, 1.0) if rigid else (style.aspect, style.height)

    def p(self, x: float, y: float) -> tuple[float, float]:
        return ((0.5 + (x - 0.5) * self.ax) * self.w, (0.5 + (y - 0.5) * self.ay) * self.w)

    def box(self, b: Box) -> Box:
        return (*self.p(b[0], b[1]), *self.p(b[2], b[3]))

    def col(self, spec: str | tuple[str, float]) -> RGB:
        name, f = spec if isinstance(spec, tuple) else (spec, 1.0)
        return shade(_FIXED[name] if name in _FIXED else getattr(self.s, name), f)

    def _shape(self, img: Image.Image, kind: str, geo: Any, fill: int | RGB, r: float) -> None:
        d = ImageDraw.Draw(img)
        if kind == "poly":
            d.polygon([self.p(x, y) for x, y in geo], fill=fill)
        elif kind == "ellipse":
            d.ellipse(self.box(geo), fill=fill)
        else:
            d.rounded_rectangle(self.box(geo), radius=r * self.w, fill=fill)

    def fill(self, kind: str, geo: Any, r: float = 0.0) -> None:
        """A body shape filled with the product's pattern."""
        m = Image.new("L", (self.w, self.w), 0)
        self._shape(m, kind, geo, 255, r)
        self.rgb.paste(self.pattern, mask=m)
        self.alpha.paste(255, mask=m)
        self.body.paste(255, mask=m)

    def part(self, kind: str, geo: Any, colour: str | tuple[str, float], r: float = 0.0) -> None:
        """An opaque part (cap, sole, side face ...) in one colour."""
        self._shape(self.rgb, kind, geo, self.col(colour), r)
        self._shape(self.alpha, kind, geo, 255, r)

    def label(self, kind: str, geo: Box, r: float = 0.0) -> None:
        """A label in the style's label colour with the brand printed on it."""
        self.part(kind, geo, "label", r)
        self.text(geo)

    def text(self, b: Box, colour: str = "ink") -> None:
        """The brand printed inside box ``b``."""
        x0, y0, x1, y1 = (round(v) for v in self.box(b))
        m = text_mask(self.s.brand, max(1, int((x1 - x0) * 0.86)), max(1, int((y1 - y0) * 0.7)))
        pos = (x0 + (x1 - x0 - m.width) // 2, y0 + (y1 - y0 - m.height) // 2)
        self.rgb.paste(self.col(colour), pos, mask=m)

    def line(self, pts: Any, colour: str | tuple[str, float], width: float) -> None:
        pix = [self.p(x, y) for x, y in pts]
        ImageDraw.Draw(self.rgb).line(pix, fill=self.col(colour), width=max(1, int(width * self.w)))

    def arc(self, b: Box, a0: float, a1: float, colour: str | tuple[str, float], w: float) -> None:
        for img, fill in ((self.rgb, self.col(colour)), (self.alpha, 255)):
            ImageDraw.Draw(img).arc(self.box(b), a0, a1, fill=fill, width=max(1, int(w * self.w)))


def _pattern(s: ProductStyle, w: int) -> np.ndarray:
    """The style's surface pattern over the whole canvas, ``(w, w, 3) uint8``."""
    yy, xx = np.mgrid[0:w, 0:w].astype(np.float32) / w
    p, ph, name = s.period, s.phase * s.period, s.pattern
    base, sec = np.array(s.colour, np.float32), np.array(s.secondary, np.float32)
    if name == "Gradient":
        t = np.clip((yy - 0.1) / 0.8, 0, 1)[..., None]
        return (base * (1 - t) + sec * t).astype(np.uint8)
    if name == "Striped":
        m = (yy + ph) % p < 0.45 * p
    elif name == "Pinstriped":
        m = (xx + ph) % p < 0.22 * p
    elif name == "Diagonal":
        m = (xx + yy + ph) % p < 0.4 * p
    elif name == "Dotted":
        dx = (xx + ph + 0.5 * p * (np.floor((yy + ph) / p) % 2)) % p - 0.5 * p
        m = dx**2 + ((yy + ph) % p - 0.5 * p) ** 2 < (0.28 * p) ** 2
    elif name == "Checked":
        m = (np.floor((xx + ph) / p) + np.floor((yy + ph) / p)) % 2 == 1
    elif name == "Banded":
        c = 0.38 + 0.25 * s.phase
        m = (np.abs(yy - c) < 0.09) | (np.abs(yy - c - 0.16) < 0.025)
    elif name == "Chevron":
        m = (yy + np.abs((xx % p) - 0.5 * p) + ph) % p < 0.4 * p
    else:
        m = np.zeros_like(xx, dtype=bool)
    return np.where(m[..., None], sec, base).astype(np.uint8)


def _light(rgb: np.ndarray, body: np.ndarray, kind: str) -> np.ndarray:
    """Shade ``rgb`` ``(w, w, 3) float32`` with a lighting model over the body's bounding box."""
    ys, xs = np.nonzero(body > 0)
    if xs.size == 0:
        return rgb
    ar = np.arange(rgb.shape[0], dtype=np.float32)
    hw, hh = max(1.0, (xs.max() - xs.min()) / 2), max(1.0, (ys.max() - ys.min()) / 2)
    tx = np.clip((ar - (xs.min() + xs.max()) / 2) / hw, -1.2, 1.2)[None, :] + 0 * ar[:, None]
    ty = np.clip((ar - (ys.min() + ys.max()) / 2) / hh, -1.2, 1.2)[:, None] + 0 * ar[None, :]
    if kind in ("cyl", "htube"):  # cylinder standing (cyl) or lying (htube)
        t = tx if kind == "cyl" else ty
        f, hi = 1 - 0.32 * t**2, 0.55 * np.exp(-(((t + 0.42) / 0.13) ** 2))
    elif kind in ("sphere", "pillow"):
        k = 1.0 if kind == "sphere" else 0.5
        f = 1 - k * 0.4 * np.clip(tx**2 + ty**2, 0, 1.2)
        hi = k * 0.6 * np.exp(-((tx + 0.35) ** 2 + (ty + 0.4) ** 2) / (0.03 / k))
    else:  # flat boxes and garments: a soft top light
        f, hi = 1.04 - 0.08 * ty - 0.04 * tx, 0.12 * np.exp(-((ty + 0.9) ** 2) / 0.05)
    out = rgb * f[..., None]
    return out + (255 - out) * np.clip(hi, 0, 1)[..., None]


def render(style: ProductStyle, size: int) -> Sprite:
    """Draw ``style`` for ``size``-pixel images; see ``Sprite`` for the returned layout."""
    fam = FAMILIES[style.family]
    c = _Canvas(style, size * SUPERSAMPLE, rigid=fam.shading == "sphere")
    for op, *args in fam.ops:
        getattr(c, op)(*args)
    rgb = _light(np.asarray(c.rgb, np.float32), np.asarray(c.body), fam.shading)
    alpha = np.asarray(c.alpha, np.float32)
    edge = alpha - np.asarray(c.alpha.filter(ImageFilter.MinFilter(3)), np.float32)
    rgb *= (1 - 0.4 * edge / 255)[..., None]
    pre = np.clip(rgb * (alpha / 255)[..., None], 0, 255).astype(np.uint8)
    levels = [(Image.fromarray(pre), c.alpha)]
    while levels[-1][1].width > 24 and len(levels) < 4:
        levels.append((levels[-1][0].reduce(2), levels[-1][1].reduce(2)))
    ys, xs = np.nonzero(alpha > 127)
    return Sprite(levels, (float(xs.min()), float(ys.min()), xs.max() + 1.0, ys.max() + 1.0))


@dataclass(frozen=True)
class Family:
    """A shape family: category path, title noun, "|"-separated sizes, shading model, draw ops.

    Each op is ``(method, *args)`` run on the drawing canvas in unit coordinates: ``fill`` (body,
    patterned), ``part`` (one colour: a style field name or fixed colour, optionally with a shade
    factor), ``label``, ``text``, ``line`` and ``arc``.
    """

    key: str
    category: str
    noun: str
    sizes: str
    shading: str
    ops: tuple[tuple[Any, ...], ...]


_H = 0.17  # bottle half-width
_BOTTLE = (
    ("fill", "rect", (0.445, 0.12, 0.555, 0.3)),
    ("fill", "poly", [(0.445, 0.28), (0.555, 0.28), (0.5 + _H, 0.43), (0.5 - _H, 0.43)]),
    ("fill", "rect", (0.5 - _H, 0.41, 0.5 + _H, 0.95), 0.04),
    ("part", "rect", (0.43, 0.05, 0.57, 0.14), "accent", 0.015),
    ("label", "rect", (0.5 - _H, 0.56, 0.5 + _H, 0.78)),
)
_BOX = (
    ("fill", "rect", (0.2, 0.12, 0.68, 0.94)),
    ("part", "poly", [(0.68, 0.12), (0.8, 0.06), (0.8, 0.88), (0.68, 0.94)], ("colour", 0.65)),
    ("part", "poly", [(0.2, 0.12), (0.32, 0.06), (0.8, 0.06), (0.68, 0.12)], ("colour", 1.25)),
    ("part", "ellipse", (0.28, 0.56, 0.6, 0.86), "accent"),
    ("label", "rect", (0.24, 0.2, 0.64, 0.4), 0.02),
)
_CAN = (
    ("fill", "rect", (0.3, 0.14, 0.7, 0.9)),
    ("fill", "ellipse", (0.3, 0.85, 0.7, 0.95)),
    ("part", "ellipse", (0.3, 0.09, 0.7, 0.19), "silver"),
    ("part", "ellipse", (0.34, 0.11, 0.66, 0.17), ("silver", 0.8)),
    ("part", "rect", (0.46, 0.12, 0.56, 0.14), "silver"),
    ("label", "rect", (0.3, 0.42, 0.7, 0.6)),
)
_MUG = (
    ("arc", (0.6, 0.36, 0.86, 0.72), 0, 360, "colour", 0.05),
    ("fill", "rect", (0.18, 0.25, 0.7, 0.88), 0.07),
    ("part", "ellipse", (0.18, 0.2, 0.7, 0.3), ("colour", 0.8)),
    ("part", "ellipse", (0.21, 0.22, 0.67, 0.28), "inside"),
    ("label", "rect", (0.3, 0.46, 0.58, 0.66), 0.02),
)
_NECK = [(0.5 - 0.12 * np.cos(a), 0.12 + 0.06 * np.sin(a)) for a in np.linspace(0, np.pi, 9)]
_TSHIRT = (
    ("fill", "poly", [*_NECK, (0.9, 0.26), (0.82, 0.44), (0.72, 0.38), (0.72, 0.92),
                      (0.28, 0.92), (0.28, 0.38), (0.18, 0.44), (0.1, 0.26)]),
    ("arc", (0.41, 0.04, 0.59, 0.18), 0, 180, ("colour", 0.7), 0.02),
    ("text", (0.34, 0.38, 0.66, 0.52), "label"),
)  # fmt: skip
_SHOE = (
    ("fill", "poly", [(0.08, 0.76), (0.09, 0.42), (0.16, 0.3), (0.4, 0.34), (0.52, 0.5),
                      (0.76, 0.56), (0.8, 0.76)]),
    ("fill", "ellipse", (0.62, 0.54, 0.95, 0.8)),
    ("part", "ellipse", (0.17, 0.29, 0.4, 0.37), "dark"),
    ("part", "rect", (0.07, 0.34, 0.13, 0.7), ("colour", 0.75), 0.02),
    ("part", "poly", [(0.3, 0.7), (0.8, 0.6), (0.86, 0.66), (0.36, 0.74)], "accent"),
    *(("line", [(x, y), (x + 0.06, y - 0.02)], ("paper", 1.05), 0.015)
      for x, y in ((0.42, 0.42), (0.49, 0.47), (0.56, 0.52))),
    ("part", "rect", (0.06, 0.74, 0.96, 0.86), ("label", 0.95), 0.04),
    ("text", (0.12, 0.56, 0.36, 0.68)),
)  # fmt: skip
_BALL = (
    ("fill", "ellipse", (0.12, 0.12, 0.88, 0.88)),
    ("arc", (-0.1, 0.2, 0.45, 0.8), -60, 60, "dark", 0.012),
    ("arc", (0.55, 0.2, 1.1, 0.8), 120, 240, "dark", 0.012),
    ("label", "ellipse", (0.32, 0.42, 0.68, 0.58)),
)
_BOOK = (
    ("part", "rect", (0.22, 0.09, 0.8, 0.93), "paper"),
    ("fill", "rect", (0.18, 0.06, 0.76, 0.9)),
    ("part", "rect", (0.18, 0.06, 0.25, 0.9), ("colour", 0.7)),
    ("part", "ellipse", (0.38, 0.5, 0.62, 0.74), "accent"),
    ("label", "rect", (0.3, 0.18, 0.72, 0.36)),
)
_JAR = (
    ("fill", "rect", (0.26, 0.22, 0.74, 0.32)),
    ("fill", "rect", (0.2, 0.3, 0.8, 0.93), 0.08),
    ("part", "rect", (0.22, 0.08, 0.78, 0.24), "accent", 0.02),
    *(("line", [(x, 0.1), (x, 0.22)], ("accent", 0.75), 0.01) for x in np.linspace(0.27, 0.73, 7)),
    ("label", "rect", (0.2, 0.48, 0.8, 0.76)),
)
_CARTON = (
    ("fill", "rect", (0.25, 0.3, 0.7, 0.94)),
    ("part", "poly", [(0.7, 0.3), (0.8, 0.26), (0.8, 0.9), (0.7, 0.94)], ("colour", 0.65)),
    ("part", "poly", [(0.25, 0.3), (0.475, 0.12), (0.7, 0.3)], ("colour", 1.2)),
    ("part", "poly", [(0.475, 0.12), (0.57, 0.09), (0.8, 0.26), (0.7, 0.3)], ("colour", 0.8)),
    ("part", "rect", (0.44, 0.06, 0.58, 0.12), ("colour", 1.1)),
    ("part", "ellipse", (0.52, 0.19, 0.6, 0.25), "accent"),
    ("label", "rect", (0.29, 0.44, 0.66, 0.62)),
)
_TUBE = (
    ("fill", "poly", [(0.08, 0.3), (0.7, 0.37), (0.78, 0.42), (0.78, 0.58), (0.7, 0.63),
                      (0.08, 0.7)]),
    ("part", "rect", (0.06, 0.29, 0.13, 0.71), ("colour", 0.8)),
    ("part", "rect", (0.78, 0.43, 0.92, 0.57), "accent", 0.015),
    ("label", "rect", (0.22, 0.42, 0.62, 0.58)),
)  # fmt: skip
_ZIG = [(0.2 + 0.05 * i, 0.08 + 0.02 * (i % 2)) for i in range(13)]
_POUCH = (
    ("fill", "poly", [*_ZIG, (0.84, 0.5), *[(1 - x, 1 - y) for x, y in _ZIG], (0.16, 0.5)]),
    *(("line", [(0.21, y), (0.79, y)], ("colour", 0.75), 0.008) for y in (0.12, 0.14, 0.86, 0.88)),
    ("label", "ellipse", (0.28, 0.34, 0.72, 0.66)),
)
_PHONE = (
    ("fill", "rect", (0.28, 0.06, 0.72, 0.94), 0.07),
    ("part", "rect", (0.33, 0.11, 0.49, 0.29), "dark", 0.03),
    *(("part", "ellipse", b, "silver")
      for b in ((0.35, 0.13, 0.42, 0.2), (0.35, 0.21, 0.42, 0.28), (0.43, 0.17, 0.475, 0.215))),
    ("text", (0.34, 0.7, 0.66, 0.8)),
)  # fmt: skip
_YS = np.linspace(0.1, 0.94, 24)
_RS = 0.08 + 0.2 * np.sin(np.pi * (_YS - 0.1) / 0.84) ** 1.6
_VASE = (
    ("fill", "poly", [*zip(0.5 + _RS, _YS, strict=True),
                      *zip(0.5 - _RS[::-1], _YS[::-1], strict=True)]),
    ("part", "ellipse", (0.4, 0.07, 0.6, 0.13), ("colour", 0.6)),
    ("text", (0.38, 0.76, 0.62, 0.86)),
)  # fmt: skip
_AS = np.linspace(0, np.pi, 20)
_CAP = (
    ("part", "poly", [(0.5, 0.56), (0.96, 0.58), (0.94, 0.66), (0.5, 0.66)], "accent"),
    ("fill", "poly", [*zip(0.48 - 0.32 * np.cos(_AS), 0.62 - 0.42 * np.sin(_AS), strict=True)]),
    ("arc", (0.3, 0.2, 0.66, 1.0), 180, 270, ("colour", 0.7), 0.01),
    ("part", "ellipse", (0.45, 0.17, 0.51, 0.23), "accent"),
    ("label", "rect", (0.26, 0.36, 0.56, 0.5), 0.02),
)  # fmt: skip
_BACKPACK = (
    ("arc", (0.4, 0.03, 0.6, 0.2), 180, 360, "dark", 0.03),
    ("part", "rect", (0.13, 0.22, 0.21, 0.82), "dark", 0.03),
    ("fill", "rect", (0.2, 0.12, 0.8, 0.94), 0.12),
    ("part", "rect", (0.28, 0.55, 0.72, 0.88), "accent", 0.06),
    ("line", [(0.3, 0.6), (0.7, 0.6)], "dark", 0.012),
    ("label", "rect", (0.34, 0.66, 0.66, 0.8), 0.02),
)

#: Shape families in the order categories use them (category ``i`` uses the ``i % 16``-th).
FAMILIES: dict[str, Family] = {
    f.key: f
    for f in (
        Family("bottle", "drinks/bottle", "Bottle", "330ml|500ml|750ml|1L", "cyl", _BOTTLE),
        Family("box", "snacks/box", "Cereal Box", "250g|375g|500g", "flat", _BOX),
        Family("can", "drinks/can", "Can", "250ml|330ml|500ml", "cyl", _CAN),
        Family("mug", "kitchen/mug", "Mug", "300ml|350ml|450ml", "cyl", _MUG),
        Family("tshirt", "apparel/t-shirt", "T-Shirt", "Size S|Size M|Size L", "flat", _TSHIRT),
        Family("shoe", "footwear/sneaker", "Sneaker", "EU 40|EU 42|EU 44", "flat", _SHOE),
        Family("ball", "sports/ball", "Ball", "Size 3|Size 4|Size 5", "sphere", _BALL),
        Family("book", "stationery/notebook", "Notebook", "A5|A4|B5", "flat", _BOOK),
        Family("jar", "pantry/jar", "Jar", "250g|370g|450g", "cyl", _JAR),
        Family("carton", "dairy/carton", "Carton", "500ml|1L|2L", "flat", _CARTON),
        Family("tube", "personal-care/tube", "Tube", "75ml|100ml|125ml", "htube", _TUBE),
        Family("pouch", "snacks/chips-bag", "Chips Bag", "45g|150g|200g", "pillow", _POUCH),
        Family("phone_case", "electronics/phone-case", "Phone Case", "6.1in|6.7in", "flat", _PHONE),
        Family("vase", "home/vase", "Vase", "20cm|30cm", "cyl", _VASE),
        Family("cap", "apparel/cap", "Cap", "One Size", "pillow", _CAP),
        Family("backpack", "bags/backpack", "Backpack", "20L|25L|30L", "pillow", _BACKPACK),
    )
}  # fmt: skip
