"""Loader for the public GroceryStoreDataset layout (Klasson et al., WACV 2019).

Expected layout (``root`` is either the folder holding ``dataset/`` or ``dataset/`` itself)::

    dataset/
      classes.csv                  header + one row per fine class (product)
      train.txt, val.txt, test.txt split files, any subset present: "rel/path.jpg, fine_id, coarse_id"
      train/..., val/..., test/... shopper ("real-shot") photos
      iconic-images-and-descriptions/<Group>/<Coarse>[/<Fine>]/<Fine>_Iconic.jpg
                                   + <Fine>_Description.txt (English) and <Fine>_Information.txt

Quirks of the files as shipped, all tolerated here: ``classes.csv`` has CRLF line endings, no final
newline and column names carrying type hints ("Class Name (str)"); its paths start with "/" and are
relative to ``dataset/``; split files separate fields with ", "; some text files start with a UTF-8
BOM; one information file is named ``<Fine>-Information.txt`` instead of ``<Fine>_Information.txt``;
a fine class may sit directly in its coarse folder (``Vegetables/Zucchini/Zucchini_Iconic.jpg``).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from vsearch.data.dataset import CatalogDataset
from vsearch.schema import CATALOG_SCHEMA, QUERY_SCHEMA

__all__ = ["SPLITS", "load_grocery_store"]

logger = logging.getLogger(__name__)

#: Split files read when present, in this order; the split name is the file's stem.
SPLITS: tuple[str, ...] = ("train", "val", "test")

_ICONIC_DIR = "iconic-images-and-descriptions"
_DESCRIPTION_CHARS = 200

# Canonical classes.csv column -> key used below. Header names are matched after dropping a
# trailing type hint such as "(str)" and normalising case and spacing.
_COLUMNS = {
    "class name": "fine_name",
    "class id": "fine_id",
    "coarse class name": "coarse_name",
    "coarse class id": "coarse_id",
    "iconic image path": "iconic_path",
    "product description path": "description_path",
}
_REQUIRED = ("fine_name", "fine_id", "coarse_name")


@dataclass(frozen=True)
class _Product:
    fine_id: int
    name: str
    coarse_id: int | None
    coarse_name: str
    iconic_rel: str
    description_rel: str


def load_grocery_store(root: str | Path) -> CatalogDataset:
    """Load a GroceryStoreDataset folder into a ``CatalogDataset``.

    Args:
        root: the folder holding ``dataset/``, or the ``dataset/`` folder itself. It must contain
            ``classes.csv`` and at least one of ``train.txt``, ``val.txt``, ``test.txt``.

    Returns:
        A ``CatalogDataset`` with

        - ``catalog`` (``CATALOG_SCHEMA``): one row per fine class whose iconic image exists, in
          class-id order. ``product_id`` is the fine class name ("Granny-Smith"), ``image_id``
          "iconic-<name>", ``image_uri`` the absolute local path of the iconic image, ``category``
          "<top-level group>/<coarse class>" (e.g. "Fruit/Apple"), ``title`` the first line of the
          ``_Information.txt`` (its "Title:" prefix removed) or the class name when absent,
          ``attributes`` a JSON object string with ``coarse_class``, ``class_id``,
          ``coarse_class_id`` and ``description`` (the English description's first ~200
          characters, "" when absent). ``quality`` = 1.0 and ``popularity`` = 0.5 (float32) are
          constants: the dataset has no quality or popularity signals.
        - ``queries`` (``QUERY_SCHEMA``): one row per photo line of every split file present, in
          file order. ``query_id`` is the photo's path relative to ``dataset/`` without its
          extension ("train/Fruit/Apple/Granny-Smith/Granny-Smith_001"), ``product_id`` the fine
          class name of its fine id, ``image_uri`` its absolute path, ``category`` as in the
          catalogue, ``split`` the split file's stem, ``box`` null. Queries of products whose
          iconic image is missing are kept (their product has no catalogue row).
        - ``clicks`` and ``duplicates``: ``None`` (the dataset has neither).

    Missing iconic images and photos listed in a split file but absent on disk are skipped and
    counted in a logged warning.

    Raises:
        FileNotFoundError: ``root`` does not exist, or holds no ``classes.csv`` or no split file.
        ValueError: ``root`` is not a directory, or ``classes.csv`` / a split file is malformed
            (missing columns, duplicate classes, unknown fine id, unparsable line).
    """
    data_dir = _find_dataset_dir(Path(root))
    products = _read_classes(data_dir / "classes.csv")
    by_id = {p.fine_id: p for p in products}
    categories = {p.fine_id: _category(p) for p in products}

    catalog = _catalog_table(data_dir, products, categories)
    queries = _queries_table(data_dir, by_id, categories)
    return CatalogDataset(catalog=catalog, queries=queries, clicks=None, duplicates=None)


def _find_dataset_dir(root: Path) -> Path:
    """Resolve ``root`` to the absolute ``dataset/`` folder or raise with what was expected."""
    expected = (
        "a GroceryStoreDataset folder: <root>/dataset/ or <root> itself holding classes.csv and at "
        f"least one of {', '.join(s + '.txt' for s in SPLITS)}"
    )
    root = root.expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"grocery store root {str(root)!r} does not exist; expected {expected}"
        )
    if not root.is_dir():
        raise ValueError(
            f"grocery store root {str(root)!r} is not a directory; expected {expected}"
        )
    for candidate in (root / "dataset", root):
        if (candidate / "classes.csv").is_file():
            data_dir = candidate.resolve()
            if not any((data_dir / f"{s}.txt").is_file() for s in SPLITS):
                raise FileNotFoundError(
                    f"{str(data_dir)!r} holds classes.csv but no split file; expected {expected}"
                )
            return data_dir
    raise FileNotFoundError(f"no classes.csv under {str(root)!r}; expected {expected}")


def _normalise_header(name: str) -> str:
    name = re.sub(r"\([^)]*\)\s*$", "", name.strip().lstrip("\ufeff"))
    return " ".join(name.lower().split())


def _read_classes(path: Path) -> list[_Product]:
    """Parse ``classes.csv`` into products, sorted by fine id."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f, skipinitialspace=True) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path} is empty; expected a header and one row per class")
    index = {
        _COLUMNS[key]: i for i, h in enumerate(rows[0]) if (key := _normalise_header(h)) in _COLUMNS
    }
    missing = [k for k in _REQUIRED if k not in index]
    if missing:
        want = [h for h, k in _COLUMNS.items() if k in missing]
        raise ValueError(f"{path}: header {rows[0]} lacks columns {want}")

    def cell(row: list[str], key: str) -> str:
        i = index.get(key)
        return row[i].strip() if i is not None and i < len(row) else ""

    products: list[_Product] = []
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for lineno, row in enumerate(rows[1:], start=2):
        try:
            fine_id = int(cell(row, "fine_id"))
            coarse_raw = cell(row, "coarse_id")
            coarse_id = int(coarse_raw) if coarse_raw else None
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: class ids must be integers, got {row}") from e
        name = cell(row, "fine_name")
        if not name:
            raise ValueError(f"{path}:{lineno}: empty class name in {row}")
        if fine_id in seen_ids or name in seen_names:
            raise ValueError(f"{path}:{lineno}: duplicate class {name!r} / id {fine_id}")
        seen_ids.add(fine_id)
        seen_names.add(name)
        products.append(
            _Product(
                fine_id=fine_id,
                name=name,
                coarse_id=coarse_id,
                coarse_name=cell(row, "coarse_name") or name,
                iconic_rel=cell(row, "iconic_path"),
                description_rel=cell(row, "description_path"),
            )
        )
    if not products:
        raise ValueError(f"{path} has a header but no class rows")
    return sorted(products, key=lambda p: p.fine_id)


def _rel_parts(rel: str) -> list[str]:
    """Split a layout path ("/a/b.jpg", "a\\b.jpg") into its non-empty components."""
    return [p for p in re.split(r"[\\/]+", rel.strip()) if p and p != "."]


def _category(product: _Product) -> str:
    """The category path "<top-level group>/<coarse class>", or the coarse class alone."""
    parts = _rel_parts(product.iconic_rel)
    if len(parts) >= 3 and parts[0] == _ICONIC_DIR:
        return f"{parts[1]}/{product.coarse_name}"
    return product.coarse_name


def _under(data_dir: Path, rel: str) -> Path | None:
    parts = _rel_parts(rel)
    return data_dir.joinpath(*parts) if parts else None


def _read_text(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    return path.read_text(encoding="utf-8-sig", errors="replace")


def _clean(text: str) -> str:
    return " ".join(text.split())  # also folds non-breaking spaces and CR/LF


def _information_file(folder: Path, name: str) -> Path | None:
    exact = folder / f"{name}_Information.txt"
    if exact.is_file():
        return exact
    # Tolerate "<name>-Information.txt" and similar; only unambiguous matches are used.
    found = sorted(p for p in folder.glob("*Information.txt") if p.is_file())
    return found[0] if len(found) == 1 else None


def _title(info_text: str, fallback: str) -> str:
    for line in info_text.splitlines():
        line = _clean(line)
        if not line:
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "title":
            line = value.strip()
        if line:
            return line
    return fallback


def _description(text: str) -> str:
    text = _clean(text)
    if len(text) <= _DESCRIPTION_CHARS:
        return text
    cut = text[:_DESCRIPTION_CHARS]
    space = cut.rfind(" ")
    return cut[:space] if space > _DESCRIPTION_CHARS // 2 else cut


def _catalog_table(
    data_dir: Path, products: list[_Product], categories: dict[int, str]
) -> pa.Table:
    rows: dict[str, list[object]] = {name: [] for name in CATALOG_SCHEMA.names}
    missing: list[str] = []
    for p in products:
        iconic = _under(data_dir, p.iconic_rel)
        if iconic is None or not iconic.is_file():
            missing.append(p.name)
            continue
        info = _information_file(iconic.parent, p.name)
        attributes = {
            "coarse_class": p.coarse_name,
            "class_id": p.fine_id,
            "coarse_class_id": p.coarse_id,
            "description": _description(_read_text(_under(data_dir, p.description_rel))),
        }
        rows["product_id"].append(p.name)
        rows["image_id"].append(f"iconic-{p.name}")
        rows["image_uri"].append(str(iconic))
        rows["category"].append(categories[p.fine_id])
        rows["title"].append(_title(_read_text(info), p.name))
        rows["attributes"].append(json.dumps(attributes, ensure_ascii=False, sort_keys=True))
        rows["quality"].append(1.0)
        rows["popularity"].append(0.5)
    if missing:
        logger.warning(
            "grocery store: %d of %d products have no iconic image and get no catalogue row: %s",
            len(missing),
            len(products),
            ", ".join(missing),
        )
    return pa.Table.from_pydict(rows, schema=CATALOG_SCHEMA)


def _split_lines(path: Path) -> Iterator[tuple[int, str, int, int | None]]:
    """Yield (line number, relative photo path, fine id, coarse id or None) per non-blank line."""
    with path.open(encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            fields = [x.strip() for x in line.rsplit(",", 2)]
            if len(fields) < 2 or not fields[0]:
                raise ValueError(
                    f"{path}:{lineno}: expected 'relative/path.jpg, fine_id, coarse_id', got {line!r}"
                )
            try:
                fine_id = int(fields[1])
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: fine id {fields[1]!r} is not an integer") from e
            coarse_id = int(fields[2]) if len(fields) == 3 and fields[2].isdigit() else None
            yield lineno, fields[0], fine_id, coarse_id


def _queries_table(
    data_dir: Path, by_id: dict[int, _Product], categories: dict[int, str]
) -> pa.Table:
    rows: dict[str, list[object]] = {name: [] for name in QUERY_SCHEMA.names}
    for split in SPLITS:
        path = data_dir / f"{split}.txt"
        if not path.is_file():
            continue
        missing = mismatched = 0
        for lineno, rel, fine_id, coarse_id in _split_lines(path):
            product = by_id.get(fine_id)
            if product is None:
                raise ValueError(f"{path}:{lineno}: fine id {fine_id} is not in classes.csv")
            if coarse_id is not None and product.coarse_id is not None:
                mismatched += coarse_id != product.coarse_id
            parts = _rel_parts(rel)
            photo = data_dir.joinpath(*parts)
            if not photo.is_file():
                missing += 1
                continue
            rows["query_id"].append(str(Path(*parts).with_suffix("").as_posix()))
            rows["product_id"].append(product.name)
            rows["image_uri"].append(str(photo))
            rows["category"].append(categories[fine_id])
            rows["split"].append(split)
            rows["box"].append(None)
        if missing:
            logger.warning(
                "grocery store: %d photos listed in %s are missing; skipped",
                missing,
                path,
            )
        if mismatched:
            logger.warning(
                "grocery store: %d lines of %s have a coarse id that disagrees with classes.csv; "
                "the fine id's class is used",
                mismatched,
                path,
            )
    return pa.Table.from_pydict(rows, schema=QUERY_SCHEMA)
