"""The HTTP service's guards: streamed body limit, bearer auth, per-client rate limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vsearch.guards import (
    BodyTooLargeError,
    RateLimiter,
    bearer_ok,
    is_loopback,
    load_token,
    read_limited,
)


def _chunks(sizes: list[int], seen: list[int]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for n in sizes:
            seen.append(n)
            yield b"x" * n

    return gen()


def test_a_body_over_the_limit_is_refused_without_reading_the_rest() -> None:
    seen: list[int] = []
    assert asyncio.run(read_limited(_chunks([3, 4], seen), 7)) == b"x" * 7
    seen.clear()
    # A 50 MB chunked upload against a 10 MB limit: stops at the chunk that crosses it.
    with pytest.raises(BodyTooLargeError, match="10000000-byte limit") as err:
        asyncio.run(read_limited(_chunks([1 << 20] * 50, seen), 10_000_000))
    assert len(seen) == 10 and err.value.received == 10 * (1 << 20)


def test_bearer_tokens() -> None:
    assert bearer_ok("Bearer s3cret", "s3cret") and bearer_ok("bearer s3cret ", "s3cret")
    for header in (None, "", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cretx"):
        assert not bearer_ok(header, "s3cret")


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert not is_loopback("example.com")


def test_token_from_environment_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VS_TOKEN", raising=False)
    assert load_token("VS_TOKEN", None) is None
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert load_token("VS_TOKEN", str(token_file)) == "from-file"
    monkeypatch.setenv("VS_TOKEN", "from-env")
    assert load_token("VS_TOKEN", str(token_file)) == "from-env"
    monkeypatch.setenv("VS_TOKEN", "  ")
    with pytest.raises(ValueError, match="empty"):
        load_token("VS_TOKEN", None)
    monkeypatch.delenv("VS_TOKEN")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_token("VS_TOKEN", str(tmp_path / "nope"))


def test_rate_limit_per_client_with_bursts_and_refill() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, max_clients=2, clock=lambda: now[0])
    assert [limiter.check("a") for _ in range(3)] == [None, None, None]
    wait = limiter.check("a")
    assert wait == pytest.approx(0.5) and RateLimiter.retry_after(wait) == "1"
    assert limiter.check("b") is None  # another client has its own bucket
    now[0] += 0.5  # one token back for "a"
    assert limiter.check("a") is None and limiter.check("a") is not None
    # Only max_clients buckets are kept: the least recently seen ("b") is forgotten.
    limiter.check("c")
    assert set(limiter._buckets) == {"a", "c"}
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
