"""Safe image decoding and the tensor conversion every network input goes through (plain torch).

``decode_image`` is the one door untrusted bytes go through: a format allow-list, a pixel limit
checked before the pixels are decoded, and errors that say what was wrong.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

#: Formats accepted from catalogues and uploads.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})

#: Per-channel statistics the networks normalise with (ImageNet's, a neutral choice), (1, 3, 1, 1).
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class ImageDecodeError(ValueError):
    """Bytes that are not an acceptable image. ``reason`` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_image(
    data: bytes, max_pixels: int = 40_000_000, max_side: int | None = None
) -> np.ndarray:
    """Decode image bytes to an ``(H, W, 3) uint8`` RGB array.

    ``max_side`` shrinks larger images (aspect kept) while decoding, e.g. uploads bound for a
    64 px network need not travel at 12 megapixels.

    Raises ``ImageDecodeError`` with reason ``empty``, ``not_an_image``, ``format_not_allowed``,
    ``too_large`` or ``corrupt``.
    """
    if not data:
        raise ImageDecodeError("empty", "no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise ImageDecodeError(
                    "format_not_allowed", f"{fmt} is not one of {sorted(ALLOWED_FORMATS)}"
                )
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_large", f"{width}x{height} exceeds the limit of {max_pixels} pixels"
                )
            if max_side is not None and max(width, height) > max_side:
                img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
            img.load()
            rgb = img.convert("RGB")
            if max_side is not None and max(rgb.size) > max_side:
                rgb.thumbnail((max_side, max_side))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not_an_image", "the bytes are not a recognised image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("corrupt", f"{type(exc).__name__}: {exc}") from exc
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise ImageDecodeError("corrupt", f"unexpected decoded shape {array.shape}")
    return array


#: Photos are decoded with their longer side at most this many times the network's input side:
#: a query (and a box view, cut from the photo) at 4x keeps the detail of a small subject; images
#: that only give centre-crop views to the feature cache or the reindex need 2x.
QUERY_DECODE_SCALE = 4
CENTRE_DECODE_SCALE = 2


def decode_side(input_size: int, box_view: bool) -> int:
    """The largest side to decode a catalogue or training image at, for a network of input side
    ``input_size`` (with a box view, the query's size, so that crops carry the same detail)."""
    return (QUERY_DECODE_SCALE if box_view else CENTRE_DECODE_SCALE) * input_size


def centre_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The centre of an ``(H, W, 3)`` image keeping ``fraction`` of each side (a view)."""
    if fraction >= 1.0:
        return image
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw]


def box_window_px(
    height: int, width: int, box: np.ndarray | Sequence[float], margin: float
) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` pixels of the box view of an image of this size: the
    square around a subject ``box`` (fractions ``x0, y0, x1, y1`` of the image's width and
    height) whose side is the box's longer side in pixels plus ``margin`` of it on each side,
    clipped to the image. None (the whole image) for a box smaller than 8 pixels or not finite."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        return None
    side = max((x1 - x0) * width, (y1 - y0) * height) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2 * width, (y0 + y1) / 2 * height
    left, right = int(max(0.0, cx - side / 2)), int(min(float(width), cx + side / 2))
    top, bottom = int(max(0.0, cy - side / 2)), int(min(float(height), cy + side / 2))
    if right - left < 8 or bottom - top < 8:
        return None
    return left, top, right, bottom


def box_window(
    height: int, width: int, box: np.ndarray | Sequence[float], margin: float
) -> tuple[float, float, float, float]:
    """The box view of ``box_window_px`` as fractions of the image (``(0, 0, 1, 1)``: the whole
    image)."""
    px = box_window_px(height, width, box, margin)
    if px is None:
        return 0.0, 0.0, 1.0, 1.0
    left, top, right, bottom = px
    return left / width, top / height, right / width, bottom / height


def into_window(box: Sequence[float], window: Sequence[float]) -> list[float]:
    """A box (fractions of the image) as fractions of ``window`` (the part inside it)."""
    left, top, right, bottom = window
    w, h = right - left, bottom - top
    x0, y0, x1, y1 = box
    inside = [(x0 - left) / w, (y0 - top) / h, (x1 - left) / w, (y1 - top) / h]
    return [min(1.0, max(0.0, float(v))) for v in inside]


def out_of_window(box: Sequence[float], window: Sequence[float]) -> list[float]:
    """A box found inside ``window`` (fractions of it) as fractions of the whole image."""
    left, top, right, bottom = window
    w, h = right - left, bottom - top
    x0, y0, x1, y1 = box
    return [left + x0 * w, top + y0 * h, left + x1 * w, top + y1 * h]


def box_crop(image: np.ndarray, box: np.ndarray | Sequence[float], margin: float) -> np.ndarray:
    """The box view of an ``(H, W, 3)`` image (``box_window_px``): the square around a subject
    ``box`` plus ``margin``, clipped to the image (Alibaba's detect-then-embed). A box smaller
    than 8 pixels, or not finite, gives the whole image."""
    px = box_window_px(image.shape[0], image.shape[1], box, margin)
    if px is None:
        return image
    left, top, right, bottom = px
    return image[top:bottom, left:right]


#: Leading bytes of the allowed formats and their media types.
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"BM", "image/bmp"),
)


def sniff_media_type(data: bytes) -> str:
    """The media type of image bytes from their signature (JPEG, PNG, WEBP, BMP), else
    ``application/octet-stream``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, media in _SIGNATURES:
        if data.startswith(magic):
            return media
    return "application/octet-stream"


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from an image's header without decoding its pixels; ``(0, 0)`` when
    the bytes are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.size[0]), int(img.size[1])
    except (UnidentifiedImageError, OSError, ValueError):
        return 0, 0


def to_tensor(
    images: list[np.ndarray],
    size: int,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> torch.Tensor:
    """Resize each ``(H, W, 3) uint8`` image to ``size``x``size`` and normalise.

    Returns ``(n, 3, size, size) float32``: RGB in [0, 1], minus ``mean``, over ``std`` (ImageNet's
    ``MEAN`` and ``STD`` when None). Images of different sizes are resized one by one (antialiased
    bilinear, aspect not kept), then stacked.
    """
    if not images:
        return torch.empty(0, 3, size, size)
    out = []
    for img in images:
        t = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).unsqueeze(0).float() / 255
        if t.shape[-2:] != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True)
        out.append(t)
    batch = torch.cat(out).clamp_(0, 1)
    m = MEAN if mean is None else torch.tensor(mean).view(1, 3, 1, 1)
    s = STD if std is None else torch.tensor(std).view(1, 3, 1, 1)
    return (batch - m) / s
