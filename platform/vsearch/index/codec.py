"""Sign binarisation of float embeddings into FAISS-compatible packed bit codes.

A ``dim``-dimensional float vector becomes ``dim // 8`` bytes: bit ``j`` of byte ``i`` (least
significant bit first) is set when component ``8 * i + j`` is strictly positive. This is the layout
FAISS's own ``real_to_binary`` produces, so the Hamming distance an ``IndexBinaryFlat`` reports
between two codes is the number of components whose signs differ.
"""

from __future__ import annotations

import numpy as np

#: Rows of ``a`` per block in :meth:`BinaryCodec.hamming`, bounding its temporary memory.
_HAMMING_BLOCK = 256


class BinaryCodec:
    """Packs the signs of ``(n, dim)`` float32 vectors into ``(n, dim // 8)`` uint8 codes."""

    def __init__(self, dim: int) -> None:
        """``dim``: embedding width, a positive multiple of 8, else ``ValueError``."""
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if dim <= 0 or dim % 8 != 0:
            raise ValueError(f"dim must be a positive multiple of 8, got {dim}")
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        """Width of the float vectors this codec encodes."""
        return self._dim

    @property
    def code_size(self) -> int:
        """Bytes per code: ``dim // 8``."""
        return self._dim // 8

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Binarise ``x``: (n, dim) float32 -> (n, dim // 8) uint8, C-contiguous.

        Bit set where ``x > 0`` (zero and negative components give 0). NaN components are
        rejected with ``ValueError``.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self._dim:
            raise ValueError(f"expected an (n, {self._dim}) array, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"expected a float array, got dtype {x.dtype}")
        if np.isnan(x).any():
            raise ValueError("cannot binarise NaN components")
        return np.ascontiguousarray(np.packbits(x > 0, axis=1, bitorder="little"))

    def hamming(self, a_codes: np.ndarray, b_codes: np.ndarray) -> np.ndarray:
        """Reference Hamming distances in numpy (slow; for tests and checks).

        ``a_codes`` (na, dim // 8) uint8 and ``b_codes`` (nb, dim // 8) uint8 -> (na, nb) int32,
        the number of differing bits between every pair.
        """
        a = self._check_codes(a_codes, "a_codes")
        b = self._check_codes(b_codes, "b_codes")
        out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
        for start in range(0, a.shape[0], _HAMMING_BLOCK):
            block = a[start : start + _HAMMING_BLOCK]
            xor = np.bitwise_xor(block[:, None, :], b[None, :, :])
            out[start : start + block.shape[0]] = np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
        return out

    def _check_codes(self, codes: np.ndarray, what: str) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.code_size or codes.dtype != np.uint8:
            raise ValueError(
                f"{what} must be an (n, {self.code_size}) uint8 array, "
                f"got shape {codes.shape} dtype {codes.dtype}"
            )
        return codes

    def __repr__(self) -> str:
        return f"BinaryCodec(dim={self._dim})"
