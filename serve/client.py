"""A small HTTP client for ``POST /search``, used by the demo and ``vsearch search``."""

from __future__ import annotations

import os
import time
from typing import Any

import requests


class SearchClient:
    """Talks to a running vsearch service at ``base_url`` (e.g. ``http://127.0.0.1:8123``)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, token: str | None = None) -> None:
        """``token``: the API token (default: ``$VSEARCH_API_TOKEN``), sent as a Bearer token."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        token = token or os.environ.get("VSEARCH_API_TOKEN")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def health(self) -> dict[str, Any]:
        resp = self.session.get(f"{self.base_url}/healthz", timeout=self.timeout_s)
        resp.raise_for_status()
        return resp.json()

    def wait_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Poll ``/readyz`` until every deployment answers, or raise ``TimeoutError``; returns
        ``/healthz``."""
        deadline = time.monotonic() + timeout_s
        last: Exception | str | None = None
        while time.monotonic() < deadline:
            try:
                resp = self.session.get(f"{self.base_url}/readyz", timeout=self.timeout_s)
                if resp.status_code == 200:
                    return self.health()
                last = resp.text
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.5)
        raise TimeoutError(f"{self.base_url} not ready after {timeout_s:.0f}s: {last}")

    def search(
        self,
        image: bytes,
        k: int = 10,
        categories: list[str] | None = None,
        text: str | None = None,
    ) -> requests.Response:
        """``POST /search`` with ``image`` as multipart field ``image`` (and ``text``, for a
        hybrid query, as field ``text``); the raw response."""
        params: dict[str, Any] = {"k": k}
        if categories:
            params["categories"] = ",".join(categories)
        return self.session.post(
            f"{self.base_url}/search",
            params=params,
            files={"image": ("query.jpg", image, "application/octet-stream")},
            data={"text": text} if text else None,
            timeout=self.timeout_s,
        )
