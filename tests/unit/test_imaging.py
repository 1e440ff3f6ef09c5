from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vsearch.imaging import ImageDecodeError, RandomAugment, decode_image, to_tensor


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
