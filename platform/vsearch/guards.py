"""Request guards of the HTTP service, framework-free so they are tested without a server: bearer
token auth, a per-client token-bucket rate limit, and reading a body under a size limit as it
streams (so a chunked 50 MB upload is refused after the first ``limit`` bytes, not read whole).
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

__all__ = [
    "BodyTooLargeError",
    "RateLimiter",
    "bearer_ok",
    "is_loopback",
    "load_token",
    "read_limited",
]


class BodyTooLargeError(ValueError):
    """The body passed its limit; ``received`` bytes had been read when that was seen."""

    def __init__(self, received: int, limit: int) -> None:
        super().__init__(f"upload exceeds the {limit}-byte limit (stopped at {received} bytes)")
        self.received = received
        self.limit = limit


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Join ``chunks`` (e.g. Starlette's ``request.stream()``), raising :class:`BodyTooLargeError` as
    soon as more than ``limit`` bytes have arrived; what was read is dropped."""
    parts: list[bytes] = []
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise BodyTooLargeError(received, limit)
        parts.append(chunk)
    return b"".join(parts)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(env_var: str, file: str | None) -> str | None:
    """The API token: the environment variable ``env_var`` if set, else the first line of
    ``file`` (``FileNotFoundError`` naming it when it is missing); None when neither is given.
    An empty token is refused (``ValueError``): it would let anyone in."""
    value = os.environ.get(env_var)
    if value is None and file:
        path = Path(file)
        if not path.exists():
            raise FileNotFoundError(f"serve.auth_token_file {file} does not exist")
        lines = path.read_text().splitlines()
        value = lines[0] if lines else ""
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise ValueError(f"the API token (${env_var} or serve.auth_token_file) is empty")
    return value


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


class RateLimiter:
    """Token buckets per client: ``rate`` requests a second on average, bursts of ``burst``.

    Holds at most ``max_clients`` buckets (the least recently seen are forgotten, i.e. reset).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, client: str) -> float | None:
        """Take one token for ``client``: None when allowed, else the seconds until the next
        token (for ``Retry-After``)."""
        now = self._clock()
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(seconds: float) -> str:
        """The ``Retry-After`` header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(seconds)))
