"""Reading images from storage: bytes through fsspec, decoding through ``vsearch.imaging``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vsearch.imaging import ImageDecodeError, decode_image
from vsearch.storage.fs import Storage


def read_image(
    storage: Storage, url: str, max_pixels: int, max_side: int | None = None
) -> tuple[np.ndarray | None, str]:
    """``(image, "")`` with an ``(H, W, 3) uint8`` image, or ``(None, reason)`` when the file is
    missing (``missing: ...``) or not a usable image (``corrupt: ...``, ``not_an_image: ...``)."""
    try:
        data = storage.read_bytes(url)
    except OSError as exc:  # FileNotFoundError included
        return None, f"missing: {exc}"
    try:
        return decode_image(data, max_pixels, max_side), ""
    except ImageDecodeError as exc:
        return None, str(exc)


def read_images(
    storage: Storage,
    urls: Sequence[str],
    max_pixels: int,
    max_side: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[np.ndarray | None], dict[str, str]]:
    """Images of ``urls`` in order (None where unreadable) and ``{url: reason}`` for those."""
    images: list[np.ndarray | None] = []
    errors: dict[str, str] = {}
    for url in urls:
        image, err = read_image(storage, url, max_pixels, max_side)
        images.append(image)
        if err:
            errors[url] = err
        if progress is not None:
            progress(1)
    return images, errors
