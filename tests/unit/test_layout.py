"""The source layout: `platform/` is a folder, never a package that shadows the standard library."""

from __future__ import annotations

import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_platform_folder_is_not_a_package() -> None:
    assert (REPO / "platform" / "vsearch" / "__init__.py").exists()
    assert not (REPO / "platform" / "__init__.py").exists()


def test_standard_library_platform_still_works() -> None:
    assert platform.system() in {"Linux", "Darwin", "Windows"}
    assert Path(platform.__file__).parent.name.startswith("python")
