"""Title tokens for the lexical channel and the model codes the combiner compares."""

from __future__ import annotations

import re

__all__ = ["model_codes", "title_tokens"]

_WORD = re.compile(r"[a-z0-9]+")
_CHUNK = re.compile(r"[^\s,;()\[\]]+")


def model_codes(text: str) -> set[str]:
    """Model-number-like chunks of ``text``: letters and digits mixed, 4+ characters once their
    punctuation is removed ("PS-LX350H/" -> "pslx350h")."""
    codes = set()
    for chunk in _CHUNK.findall(text.lower()):
        code = "".join(_WORD.findall(chunk))
        if len(code) >= 4 and any(c.isdigit() for c in code) and any(c.isalpha() for c in code):
            codes.add(code)
    return codes


def title_tokens(text: str) -> list[str]:
    """Lower-case alphanumeric words of ``text`` followed by its ``model_codes`` (sorted) not
    already among them."""
    words = _WORD.findall(text.lower())
    seen = set(words)
    return words + sorted(c for c in model_codes(text) if c not in seen)
