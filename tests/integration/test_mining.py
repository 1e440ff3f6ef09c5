"""The mine job on a local Ray cluster: the synthetic click log, with a few sessions given a second
click, mined by Ray Data gives exactly the triplets of the in-process core."""

from __future__ import annotations

import json
import posixpath
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from vsearch.config import Config, MiningConfig
from vsearch.schema import CLICK_SCHEMA
from vsearch.training.click_mining import TRIPLET_SCHEMA, ProductCategories, mine_click_log

pytestmark = pytest.mark.ray


def _add_second_clicks(clicks: pa.Table, sessions: int) -> pa.Table:
    """A later click on another shown product for the first ``sessions`` sessions."""
    extra = []
    for row in clicks.slice(0, sessions).to_pylist():
        other = next(p for p in row["shown_product_ids"] if p != row["clicked_product_id"])
        extra.append(
            {
                **row,
                "clicked_product_id": other,
                "timestamp": row["timestamp"] + timedelta(seconds=30),
            }
        )
    return pa.concat_tables([clicks, pa.Table.from_pylist(extra, schema=CLICK_SCHEMA)])


def _sorted_rows(table: pa.Table) -> list[tuple]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


def test_mine_job_matches_the_core(tiny_config: Config) -> None:
    from jobs import mine
    from jobs.common import ensure_dataset, storage_of
    from vsearch.storage import read_dataset

    cfg = tiny_config.model_copy(
        update={
            "mine": MiningConfig(multi_click="downweight", easy_negatives=2, seed=5, partitions=2)
        }
    )
    prefix = ensure_dataset(cfg)
    storage = storage_of(cfg)
    clicks_name = posixpath.join(prefix, "clicks.parquet")
    storage.write_table(clicks_name, _add_second_clicks(storage.read_table(clicks_name), 3))

    url = mine.main(cfg)

    version = storage.read_text("triplets/LATEST").strip()
    assert url == storage.url(f"triplets/{version}")
    got = pq.read_table(storage.path(url), schema=TRIPLET_SCHEMA)
    data = read_dataset(storage, prefix)  # query image URIs made absolute, as the job does
    assert data.clicks is not None
    expected, stats = mine_click_log(
        data.clicks, ProductCategories.from_table(data.catalog), cfg.mine
    )
    assert got.num_rows == expected.num_rows > 0
    assert _sorted_rows(got) == _sorted_rows(expected)
    info = json.loads(storage.read_text(f"triplets/{version}/_stats.json"))
    assert {k: info[k] for k in stats} == stats
    assert (
        stats["sessions"] == data.clicks.num_rows - 3
        and stats["sessions_kept"] == stats["sessions"]
    )
    # The three two-click sessions are down-weighted; every query image is an absolute URL.
    halves = got.filter(pc.equal(got["weight"], 0.5))
    assert len(set(halves["query_image_uri"].to_pylist())) == 3
    assert all(u.startswith("file://") for u in got["query_image_uri"].to_pylist())
