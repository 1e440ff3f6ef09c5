from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vsearch.augment import (
    RandomAugment,
    foreground_alpha,
    random_backgrounds,
    white_background_mask,
)
from vsearch.imaging import ImageDecodeError, decode_image, to_tensor


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decodes_allowed_formats(photo: np.ndarray, fmt: str) -> None:
    out = decode_image(_encode(photo, fmt))
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    if fmt == "PNG":
        np.testing.assert_array_equal(out, photo)


def test_grey_and_alpha_become_rgb(photo: np.ndarray) -> None:
    grey = _encode(photo[..., 0], "PNG")
    rgba = _encode(np.dstack([photo, photo[..., :1]]), "PNG")
    assert decode_image(grey).shape == (40, 60, 3)
    assert decode_image(rgba).shape == (40, 60, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not_an_image"),
    ],
)
def test_rejects_non_images(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason == reason


def test_rejects_disallowed_format(photo: np.ndarray) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_encode(photo, "GIF"))
    assert info.value.reason == "format_not_allowed"
    assert "GIF" in str(info.value)


def test_rejects_too_many_pixels(photo: np.ndarray) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_encode(photo, "PNG"), max_pixels=40 * 60 - 1)
    assert info.value.reason == "too_large"


def test_truncated_jpeg_is_corrupt(photo: np.ndarray) -> None:
    data = _encode(photo, "JPEG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.reason == "corrupt"


def test_max_side_shrinks_keeping_aspect() -> None:
    big = np.zeros((400, 800, 3), dtype=np.uint8)
    out = decode_image(_encode(big, "JPEG"), max_side=100)
    assert max(out.shape[:2]) == 100
    assert abs(out.shape[1] / out.shape[0] - 2.0) < 0.05


def test_to_tensor_shapes_and_normalisation(photo: np.ndarray) -> None:
    white = np.full((10, 10, 3), 255, dtype=np.uint8)
    t = to_tensor([photo, white], 32)
    assert t.shape == (2, 3, 32, 32) and t.dtype == torch.float32
    # White normalises to (1 - mean) / std per channel.
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(t[1, :, 0, 0], expected)
    assert to_tensor([], 16).shape == (0, 3, 16, 16)


def test_augment_is_seeded_and_keeps_shape(photo: np.ndarray) -> None:
    x = to_tensor([photo] * 4, 32)
    aug = RandomAugment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, x)


def _product_on_white(size: int = 48) -> np.ndarray:
    """A catalogue-style image: a patterned box with a white label, centred on pure white."""
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    lo, hi = size // 5, size - size // 5
    img[lo:hi, lo:hi] = (200, 40, 40)
    img[lo + 4 : lo + 10, lo + 4 : hi - 4] = 255  # a white label inside the product
    return img


def test_white_background_mask_and_foreground_alpha(photo: np.ndarray) -> None:
    x = to_tensor([_product_on_white(), photo], 48)
    assert white_background_mask(x).tolist() == [True, False]
    alpha = foreground_alpha(x[:1])
    assert alpha.shape == (1, 1, 48, 48)
    assert float(alpha[0, 0, 0, 0]) < 0.05  # the white surround is background
    assert float(alpha[0, 0, 24, 24]) > 0.95  # the product is foreground ...
    assert float(alpha[0, 0, 9 + 3, 24]) > 0.95  # ... its white label included


def test_composite_augment_is_seeded_and_replaces_the_white_background(photo: np.ndarray) -> None:
    x = to_tensor([_product_on_white()] * 6 + [photo] * 2, 48)
    aug = RandomAugment(mode="composite", paste_prob=1.0)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # The corners of the pasted images are no longer (near) white.
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    corners = a[:6, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (6, 3, 4)
    far = (corners - white.view(1, 3, 1)).abs().amax(dim=1) > 0.5
    assert far.float().mean() > 0.8
    # Nothing is pasted when paste_prob is 0: the corners of a centred product stay light.
    kept = RandomAugment(mode="composite", paste_prob=0.0)(x[:1], torch.Generator().manual_seed(1))
    assert torch.isfinite(kept).all()


def test_random_backgrounds_are_cluttered_and_seeded() -> None:
    bg = random_backgrounds(4, 32, torch.Generator().manual_seed(0))
    assert bg.shape == (4, 3, 32, 32) and float(bg.min()) >= 0 and float(bg.max()) <= 1
    assert float(bg.std(dim=(2, 3)).mean()) > 0.02
    torch.testing.assert_close(bg, random_backgrounds(4, 32, torch.Generator().manual_seed(0)))


def test_unknown_augment_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        RandomAugment(mode="fancy")


def _png_bomb(side: int) -> bytes:
    """A valid PNG header for a ``side`` x ``side`` grey image whose pixel data is a short run of
    zeros: a few hundred bytes that would decode to ``side**2`` bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 64, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [10_000, 60_000])  # past our limit; past Pillow's too
def test_a_decompression_bomb_is_refused_from_its_header_quickly(side: int) -> None:
    import time

    bomb = _png_bomb(side)
    assert len(bomb) < 20_000
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError) as err:
        decode_image(bomb, max_pixels=40_000_000)
    took = time.perf_counter() - started
    assert err.value.reason == "too_large" and "exceeds" in err.value.detail
    assert took < 0.05, f"took {took * 1000:.1f} ms"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_fail_with_a_reason(data: bytes) -> None:
    # What the service turns into a 4xx: never another exception type (which would be a 5xx).
    try:
        image = decode_image(data, max_pixels=1_000_000)
    except ImageDecodeError as exc:
        assert exc.reason in {"empty", "not_an_image", "format_not_allowed", "too_large", "corrupt"}
    else:
        assert image.ndim == 3 and image.shape[2] == 3


def _small_png() -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


_PNG = _small_png()


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, 7000), flips=st.lists(st.integers(0, 6999), max_size=8))
def test_damaged_real_images_fail_with_a_reason(cut: int, flips: list[int]) -> None:
    data = bytearray(_PNG[: max(1, cut)])
    for i in flips:
        if i < len(data):
            data[i] ^= 0x5A
    try:
        decode_image(bytes(data), max_pixels=1_000_000)
    except ImageDecodeError as exc:
        assert exc.reason in {"empty", "not_an_image", "format_not_allowed", "too_large", "corrupt"}
