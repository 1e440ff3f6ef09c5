"""Two-table product-matching benchmarks in the public Leipzig CSV layout (Abt-Buy and its family).

A benchmark folder holds two listing CSVs (one per shop) and a perfect-mapping CSV whose two columns
name the ids of matching rows. ``load_matching_set`` turns it into one catalogue of listings
(``LISTING_SCHEMA``) plus the true matches (``MATCH_SCHEMA``), the ground truth of the dedup job.

Benchmarks of this family differ in column names ("name" or "title"), encodings (utf-8 or latin-1)
and quoting; the file layout comes from ``MatchingConfig`` and every row that cannot be read is
counted under a reason and skipped, never fatal.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from vsearch.config import MatchingConfig, MatchingTableConfig
from vsearch.schema import LISTING_SCHEMA, MATCH_SCHEMA

__all__ = ["MatchingSet", "decode_text", "load_matching_set"]

_AUTO_CODECS = ("utf-8", "cp1252", "latin-1")


@dataclass
class MatchingSet:
    """Listings of both tables and their true matches.

    ``listings``: ``LISTING_SCHEMA``; ``listing_id`` is ``"<source>:<id>"``, ``category`` is "all"
    (the benchmarks have none), ``image_uri`` null, ``quality`` 1.0. ``matches``: ``MATCH_SCHEMA``
    over those ids, each true pair once. ``skipped`` counts rows left out by reason, e.g.
    ``{"abt: malformed": 2, "mapping: unknown id": 1}``; ``encodings`` the codec used per file.
    """

    listings: pa.Table
    matches: pa.Table
    skipped: dict[str, int] = field(default_factory=dict)
    encodings: dict[str, str] = field(default_factory=dict)


def decode_text(data: bytes, encoding: str = "auto") -> tuple[str, str]:
    """Decode a whole file: (text, codec used).

    "auto" takes the first of utf-8, cp1252 and latin-1 that decodes every byte (latin-1 always
    does). A named codec decodes with ``surrogateescape``, so undecodable bytes survive as lone
    surrogates and the rows holding them can be counted and skipped (see ``_has_undecodable``).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if encoding != "auto":
        return data.decode(encoding, errors="surrogateescape"), encoding
    for codec in _AUTO_CODECS:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _has_undecodable(values: list[str]) -> bool:
    return any("\udc80" <= ch <= "\udcff" for v in values for ch in v)


def _read_rows(
    path: Path, encoding: str, label: str, skipped: Counter
) -> tuple[list[str], list[list[str]], str]:
    """Header, well-formed rows and codec of a CSV; counts malformed and undecodable rows."""
    text, codec = decode_text(path.read_bytes(), encoding)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"{path}: the file is empty (expected a header row)") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable header: {exc}") from None
    rows = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:
            skipped[f"{label}: malformed"] += 1
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            skipped[f"{label}: malformed"] += 1
        elif _has_undecodable(row):
            skipped[f"{label}: undecodable"] += 1
        else:
            rows.append(row)
    return header, rows, codec


def _read_table(
    root: Path, spec: MatchingTableConfig, skipped: Counter, encodings: dict[str, str]
) -> list[dict]:
    path = root / spec.file
    if not path.is_file():
        raise FileNotFoundError(f"listing table {str(path)!r} does not exist")
    header, rows, encodings[spec.file] = _read_rows(path, spec.encoding, spec.source, skipped)
    if spec.id_column not in header:
        raise ValueError(f"{path}: no id column {spec.id_column!r}; header is {header}")
    title_col = next((c for c in spec.title_columns if c in header), None)
    if title_col is None:
        raise ValueError(f"{path}: none of the title columns {spec.title_columns} in {header}")
    id_at, title_at = header.index(spec.id_column), header.index(title_col)
    attrs = [(c, header.index(c)) for c in spec.attribute_columns if c in header]
    seen: set[str] = set()
    out = []
    for row in rows:
        raw_id = row[id_at].strip()
        if not raw_id:
            skipped[f"{spec.source}: missing id"] += 1
            continue
        if raw_id in seen:
            skipped[f"{spec.source}: duplicate id"] += 1
            continue
        seen.add(raw_id)
        title = " ".join(row[title_at].split())
        if not title:
            # Kept: the lexical and text channels skip it, the others may still match it.
            skipped[f"{spec.source}: empty title (kept)"] += 1
        values = {c: " ".join(row[i].split()) for c, i in attrs if row[i].strip()}
        out.append(
            {
                "listing_id": f"{spec.source}:{raw_id}",
                "source": spec.source,
                "category": "all",
                "title": title,
                "attributes": json.dumps(values, ensure_ascii=False, sort_keys=True),
                "image_uri": None,
                "quality": 1.0,
            }
        )
    return out


def load_matching_set(root: str | Path, cfg: MatchingConfig) -> MatchingSet:
    """Read a Leipzig-layout benchmark folder into listings and true matches.

    Raises:
        FileNotFoundError: ``root`` or one of the configured files does not exist.
        ValueError: a file has no header, lacks the configured id / title / mapping columns, or
            no listing could be read.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"matching benchmark root {str(root)!r} is not a directory")
    skipped: Counter = Counter()
    encodings: dict[str, str] = {}
    tables = [_read_table(root, spec, skipped, encodings) for spec in cfg.tables]
    listings = [row for rows in tables for row in rows]
    if not listings:
        raise ValueError(f"{root}: no readable listing in {[t.file for t in cfg.tables]}")

    path = root / cfg.mapping
    if not path.is_file():
        raise FileNotFoundError(f"mapping {str(path)!r} does not exist")
    header, rows, encodings[cfg.mapping] = _read_rows(
        path, cfg.mapping_encoding, "mapping", skipped
    )
    columns = cfg.mapping_columns or header[:2]
    missing = [c for c in columns if c not in header]
    if len(columns) < 2 or missing:
        raise ValueError(f"{path}: mapping columns {columns} not all in header {header}")
    at = [header.index(c) for c in columns]
    known = [{row["listing_id"] for row in rows_} for rows_ in tables]
    pairs: set[tuple[str, str]] = set()
    for row in rows:
        ids = [f"{spec.source}:{row[i].strip()}" for spec, i in zip(cfg.tables, at, strict=True)]
        if not all(i in k for i, k in zip(ids, known, strict=True)):
            skipped["mapping: unknown id"] += 1
            continue
        pair = (min(ids), max(ids))
        if pair in pairs:
            skipped["mapping: duplicate pair"] += 1
            continue
        pairs.add(pair)
    matches = pa.Table.from_pylist(
        [{"a": a, "b": b} for a, b in sorted(pairs)], schema=MATCH_SCHEMA
    )
    return MatchingSet(
        listings=pa.Table.from_pylist(listings, schema=LISTING_SCHEMA),
        matches=matches,
        skipped=dict(sorted(skipped.items())),
        encodings=encodings,
    )
