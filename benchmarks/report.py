"""What every benchmark script does with its table: print it and write it to a results file."""

from __future__ import annotations

from pathlib import Path


def write_table(lines: list[str], out: Path) -> str:
    """Join ``lines`` into the Markdown report, print it, write it to ``out`` (creating its
    folder) and say where; returns the text."""
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return text
