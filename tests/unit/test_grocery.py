"""Tests for ``vsearch.data.grocery.load_grocery_store``.

The first group runs on a tiny layout fabricated in ``tmp_path`` that mimics the shipped files'
quirks (CRLF ``classes.csv`` without a final newline, type hints in its header, ", "-separated split
files, a BOM, a "-Information.txt" file name, a fine class sitting directly in its coarse folder).
The second group reads the real folder and skips when it is absent.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from vsearch.data.dataset import CatalogDataset
from vsearch.data.grocery import load_grocery_store
from vsearch.schema import CATALOG_SCHEMA, QUERY_SCHEMA

ICONIC = "iconic-images-and-descriptions"
LONG_DESCRIPTION = "Granny Smith is a green apple with white, firm pulp. " * 10

# (fine name, fine id, coarse name, coarse id, folder under the iconic dir / photo split dir)
CLASSES = [
    ("Granny-Smith", 0, "Apple", 0, "Fruit/Apple/Granny-Smith"),
    ("Pink-Lady", 1, "Apple", 0, "Fruit/Apple/Pink-Lady"),
    ("Zucchini", 2, "Zucchini", 1, "Vegetables/Zucchini"),
]
TRAIN = [
    ("Fruit/Apple/Granny-Smith/Granny-Smith_001.jpg", 0, 0),
    ("Fruit/Apple/Granny-Smith/Granny-Smith_002.jpg", 0, 0),
    ("Fruit/Apple/Pink-Lady/Pink-Lady_001.jpg", 1, 0),
    ("Vegetables/Zucchini/Zucchini_001.jpg", 2, 1),
]
VAL = [
    ("Fruit/Apple/Granny-Smith/Granny-Smith_001.jpg", 0, 0),
    ("Vegetables/Zucchini/Zucchini_001.jpg", 2, 1),
]


def _jpeg(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, format="JPEG")


def _write_split(data: Path, split: str, rows: list[tuple[str, int, int]]) -> None:
    lines = [f"{split}/{rel}, {fine}, {coarse}" for rel, fine, coarse in rows]
    for rel, _, _ in rows:
        _jpeg(data / split / rel, (200, 30, 30))
    (data / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_layout(root: Path) -> Path:
    """Write a 3-product GroceryStore layout under ``root/dataset``; return ``root``."""
    data = root / "dataset"
    header = (
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
        "Iconic Image Path (str),Product Description Path (str)"
    )
    rows = [header]
    for name, fine, coarse_name, coarse, folder in CLASSES:
        base = f"/{ICONIC}/{folder}/{name}"
        rows.append(
            f"{name},{fine},{coarse_name},{coarse},{base}_Iconic.jpg,{base}_Description.txt"
        )
        _jpeg(data / ICONIC / folder / f"{name}_Iconic.jpg", (30, 200, 30))
    (data / "classes.csv").write_bytes("\r\n".join(rows).encode("utf-8"))  # no final newline

    apple = data / ICONIC / "Fruit/Apple/Granny-Smith"
    (apple / "Granny-Smith_Description.txt").write_text(LONG_DESCRIPTION, encoding="utf-8")
    (apple / "Granny-Smith_Information.txt").write_text(
        "\ufeffTitle: Apple Granny Smith Class 1 \nCountry and volume: Italy,\u00a0ca 180g \n",
        encoding="utf-8",
    )
    zucchini = data / ICONIC / "Vegetables/Zucchini"
    (zucchini / "Zucchini_Description.txt").write_text("Zucchini can be eaten raw.", "utf-8")
    (zucchini / "Zucchini-Information.txt").write_text("Title: Zucchini Class 1\n", "utf-8")
    # Pink-Lady has neither description nor information file.

    _write_split(data, "train", TRAIN)
    _write_split(data, "val", VAL)
    return root


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "grocery")


def test_catalog_rows(layout: Path) -> None:
    ds = load_grocery_store(layout)
    assert ds.catalog.schema.equals(CATALOG_SCHEMA)
    rows = {r["product_id"]: r for r in ds.catalog.to_pylist()}
    assert list(rows) == ["Granny-Smith", "Pink-Lady", "Zucchini"]
    assert rows["Granny-Smith"]["image_id"] == "iconic-Granny-Smith"
    assert rows["Granny-Smith"]["category"] == "Fruit/Apple"
    assert rows["Pink-Lady"]["category"] == "Fruit/Apple"
    assert rows["Zucchini"]["category"] == "Vegetables/Zucchini"
    assert rows["Granny-Smith"]["title"] == "Apple Granny Smith Class 1"
    assert rows["Pink-Lady"]["title"] == "Pink-Lady"  # no information file
    assert rows["Zucchini"]["title"] == "Zucchini Class 1"  # "-Information.txt" variant
    for r in rows.values():
        uri = Path(r["image_uri"])
        assert uri.is_absolute() and uri.is_file()
        assert r["quality"] == 1.0 and r["popularity"] == 0.5

    attrs = json.loads(rows["Granny-Smith"]["attributes"])
    assert attrs["coarse_class"] == "Apple"
    assert attrs["class_id"] == 0 and attrs["coarse_class_id"] == 0
    assert 100 < len(attrs["description"]) <= 200
    assert LONG_DESCRIPTION.startswith(attrs["description"])
    assert json.loads(rows["Pink-Lady"]["attributes"])["description"] == ""
    assert json.loads(rows["Zucchini"]["attributes"]) == {
        "class_id": 2,
        "coarse_class": "Zucchini",
        "coarse_class_id": 1,
        "description": "Zucchini can be eaten raw.",
    }
    assert ds.clicks is None and ds.duplicates is None


def test_queries_rows_and_splits(layout: Path) -> None:
    ds = load_grocery_store(layout)
    q = ds.queries
    assert q.schema.equals(QUERY_SCHEMA)
    assert q.num_rows == len(TRAIN) + len(VAL)
    assert ds.queries_of("train").num_rows == len(TRAIN)
    assert ds.queries_of("val").num_rows == len(VAL)
    with pytest.raises(ValueError, match="no queries in split 'test'"):
        ds.queries_of("test")

    rows = q.to_pylist()
    ids = [r["query_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "train/Fruit/Apple/Granny-Smith/Granny-Smith_001"
    assert "val/Fruit/Apple/Granny-Smith/Granny-Smith_001" in ids
    expected_products = [CLASSES[fine][0] for _, fine, _ in TRAIN + VAL]
    assert [r["product_id"] for r in rows] == expected_products
    cats = {r["product_id"]: r["category"] for r in rows}
    assert cats == {
        "Granny-Smith": "Fruit/Apple",
        "Pink-Lady": "Fruit/Apple",
        "Zucchini": "Vegetables/Zucchini",
    }
    for r in rows:
        uri = Path(r["image_uri"])
        assert uri.is_absolute() and uri.is_file()
        assert r["box"] is None
        assert r["split"] in {"train", "val"}


def test_root_may_be_dataset_folder(layout: Path) -> None:
    a = load_grocery_store(layout)
    b = load_grocery_store(str(layout / "dataset"))
    assert a.catalog.equals(b.catalog)
    assert a.queries.equals(b.queries)


def test_test_split_read_when_present(layout: Path) -> None:
    _write_split(layout / "dataset", "test", [("Fruit/Apple/Pink-Lady/Pink-Lady_009.jpg", 1, 0)])
    ds = load_grocery_store(layout)
    test = ds.queries_of("test").to_pylist()
    assert [r["product_id"] for r in test] == ["Pink-Lady"]
    assert test[0]["query_id"] == "test/Fruit/Apple/Pink-Lady/Pink-Lady_009"


def test_only_val_split_present(layout: Path) -> None:
    (layout / "dataset" / "train.txt").unlink()
    ds = load_grocery_store(layout)
    assert set(ds.queries["split"].to_pylist()) == {"val"}


def test_missing_iconic_image_is_skipped_with_warning(
    layout: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (layout / "dataset" / ICONIC / "Fruit/Apple/Pink-Lady/Pink-Lady_Iconic.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="vsearch.data.grocery"):
        ds = load_grocery_store(layout)
    assert ds.catalog["product_id"].to_pylist() == ["Granny-Smith", "Zucchini"]
    assert "1 of 3 products have no iconic image" in caplog.text
    assert "Pink-Lady" in caplog.text
    # Its photos stay in the queries: the ground truth is still valid.
    assert "Pink-Lady" in ds.queries["product_id"].to_pylist()


def test_missing_photo_is_skipped_with_warning(
    layout: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (layout / "dataset" / "val" / VAL[0][0]).unlink()
    with caplog.at_level(logging.WARNING, logger="vsearch.data.grocery"):
        ds = load_grocery_store(layout)
    assert ds.queries_of("val").num_rows == len(VAL) - 1
    assert "1 photos listed in" in caplog.text


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; expected a GroceryStoreDataset"):
        load_grocery_store(tmp_path / "nope")


def test_root_without_layout_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no classes\.csv under"):
        load_grocery_store(tmp_path)


def test_root_that_is_a_file_raises(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        load_grocery_store(f)


def test_no_split_file_raises(layout: Path) -> None:
    for split in ("train", "val"):
        (layout / "dataset" / f"{split}.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no split file.*train\.txt, val\.txt, test\.txt"):
        load_grocery_store(layout)


def test_bad_header_raises(layout: Path) -> None:
    (layout / "dataset" / "classes.csv").write_text("Name,Id\nA,0\n")
    with pytest.raises(ValueError, match="lacks columns"):
        load_grocery_store(layout)


def test_unknown_fine_id_raises(layout: Path) -> None:
    (layout / "dataset" / "val.txt").write_text("val/x.jpg, 99, 0\n")
    with pytest.raises(ValueError, match=r"val.txt:1: fine id 99 is not in classes.csv"):
        load_grocery_store(layout)


# --- the real folder -------------------------------------------------------------------------

REAL_ROOT = Path(
    os.environ.get(
        "VSEARCH_GROCERY_ROOT",
        Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "grocery-store",
    )
)


@pytest.fixture(scope="module")
def real() -> tuple[Path, CatalogDataset]:
    if not REAL_ROOT.exists():
        pytest.skip(f"GroceryStoreDataset not found at {REAL_ROOT} (set VSEARCH_GROCERY_ROOT)")
    return REAL_ROOT, load_grocery_store(REAL_ROOT)


def _data_dir(root: Path) -> Path:
    return root / "dataset" if (root / "dataset" / "classes.csv").is_file() else root


def test_real_catalog(real: tuple[Path, CatalogDataset]) -> None:
    _, ds = real
    assert ds.catalog.num_rows == 81
    assert len(set(ds.catalog["product_id"].to_pylist())) == 81
    assert all(Path(u).is_file() for u in ds.catalog["image_uri"].to_pylist())
    categories = ds.catalog["category"].to_pylist()
    assert all(c.split("/")[0] in {"Fruit", "Vegetables", "Packages"} for c in categories)
    assert all(t.strip() for t in ds.catalog["title"].to_pylist())


def test_real_queries_match_split_files(real: tuple[Path, CatalogDataset]) -> None:
    root, ds = real
    data = _data_dir(root)
    present = {p.stem for p in data.glob("*.txt") if p.stem in {"train", "val", "test"}}
    assert {"train", "val"} <= present
    assert set(ds.queries["split"].to_pylist()) == present
    for split in present:
        lines = [ln for ln in (data / f"{split}.txt").read_text().splitlines() if ln.strip()]
        assert ds.queries_of(split).num_rows == len(lines)
    assert ds.queries.num_rows == len(set(ds.queries["query_id"].to_pylist()))
    assert all(Path(u).is_file() for u in ds.queries["image_uri"].to_pylist())
    products = set(ds.catalog["product_id"].to_pylist())
    assert set(ds.queries["product_id"].to_pylist()) <= products
