"""The Leipzig two-table loader: encodings, column names from config, bad rows counted not fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsearch.config import MatchingConfig, load_config
from vsearch.data.matching import decode_text, load_matching_set

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "abt-buy"


def _layout(title_a: str = "name") -> MatchingConfig:
    return MatchingConfig.model_validate(
        {
            "tables": [{"file": "A.csv", "source": "a"}, {"file": "B.csv", "source": "b"}],
            "mapping": "map.csv",
        }
    )


def test_reads_two_tables_with_different_encodings_and_title_columns(tmp_path: Path) -> None:
    (tmp_path / "A.csv").write_bytes(
        'id,name,description,price\n1,"Caf\xe9 maker CM10","hot",$10\n2,"Kettle K2","",\n'.encode(
            "latin-1"
        )
    )
    (tmp_path / "B.csv").write_text(
        'id,title,manufacturer\n10,"Café maker CM-10",ACME\n11,"Toaster T1",\n', encoding="utf-8"
    )
    (tmp_path / "map.csv").write_text("idA,idB\n1,10\n", encoding="utf-8")
    data = load_matching_set(tmp_path, _layout())
    rows = data.listings.to_pylist()
    assert [r["listing_id"] for r in rows] == ["a:1", "a:2", "b:10", "b:11"]
    assert rows[0]["title"] == "Café maker CM10" and rows[2]["title"] == "Café maker CM-10"
    assert '"manufacturer": "ACME"' in rows[2]["attributes"]
    assert data.matches.to_pylist() == [{"a": "a:1", "b": "b:10"}]
    assert data.encodings["A.csv"] in ("cp1252", "latin-1") and data.encodings["B.csv"] == "utf-8"
    assert data.skipped == {}


def test_bad_rows_are_counted_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "A.csv").write_bytes(
        b'id,name\n1,"good one"\n2,"too","many","cells"\n,"no id"\n1,"dup id"\n3,""\n4,"bad \xff byte"\n'
    )
    (tmp_path / "B.csv").write_text('id,name\n10,"x"\n', encoding="utf-8")
    (tmp_path / "map.csv").write_text("idA,idB\n1,10\n1,10\n99,10\n", encoding="utf-8")
    layout = _layout()
    layout.tables[0].encoding = "utf-8"
    data = load_matching_set(tmp_path, layout)
    assert data.skipped == {
        "a: duplicate id": 1,
        "a: empty title (kept)": 1,
        "a: malformed": 1,
        "a: missing id": 1,
        "a: undecodable": 1,
        "mapping: duplicate pair": 1,
        "mapping: unknown id": 1,
    }
    assert [r["listing_id"] for r in data.listings.to_pylist()] == ["a:1", "a:3", "b:10"]
    assert data.matches.num_rows == 1


def test_clear_errors_for_missing_files_and_columns(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_matching_set(tmp_path / "nope", _layout())
    (tmp_path / "A.csv").write_text("id,name\n1,x\n")
    with pytest.raises(FileNotFoundError, match=r"B\.csv"):
        load_matching_set(tmp_path, _layout())
    (tmp_path / "B.csv").write_text("id,name\n1,x\n")
    with pytest.raises(FileNotFoundError, match=r"map\.csv"):
        load_matching_set(tmp_path, _layout())
    (tmp_path / "A.csv").write_text("key,name\n1,x\n")
    with pytest.raises(ValueError, match="no id column 'id'"):
        load_matching_set(tmp_path, _layout())


def test_decode_auto_falls_back() -> None:
    assert decode_text("é".encode())[1] == "utf-8"
    assert decode_text(b"\xe9")[1] == "cp1252"
    assert decode_text(b"\xef\xbb\xbfid")[0] == "id"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets/abt-buy is absent")
def test_abt_buy_config_reads_the_shared_benchmark() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "abt-buy.yaml")
    cfg.data.matching_root = str(SHARED)
    assert cfg.data.matching is not None
    data = load_matching_set(cfg.data.matching_root, cfg.data.matching)
    assert data.listings.num_rows == 1081 + 1092
    assert data.matches.num_rows == 1097
