"""Job: mine training triplets from the click log with Ray Data, write them as a new version.

``triplets/<version>/`` holds the Parquet files (``vsearch.training.click_mining.TRIPLET_SCHEMA``)
and ``_stats.json`` (the counters, the policy); ``triplets/LATEST`` moves to the new version only
once both are written.
"""

from __future__ import annotations

import json
import posixpath
import time

from jobs.common import ensure_dataset, print_summary, storage_of
from vsearch.config import Config
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.mining import mine_triplets
from vsearch.storage.artifacts import new_version


def main(cfg: Config) -> str:
    """Mine ``<dataset>/clicks.parquet`` under the ``cfg.mine`` policy; return the triplets URL."""
    prefix = ensure_dataset(cfg)
    storage = storage_of(cfg)
    version = new_version("t")
    started = time.perf_counter()
    with ray_session(cfg.ray):
        mined = mine_triplets(cfg, prefix, version)
    info = {"version": version, "dataset": prefix, "policy": cfg.mine.model_dump(), **mined.stats}
    storage.write_text(
        posixpath.join("triplets", version, "_stats.json"), json.dumps(info, indent=2)
    )
    storage.write_text("triplets/LATEST", version)
    stats = mined.stats
    print_summary(
        "mine",
        {
            "triplets version (latest)": version,
            "triplets URL": mined.url,
            "policy": f"{cfg.mine.multi_click} (max_clicks={cfg.mine.max_clicks})",
            "sessions": stats["sessions"],
            "click rows": stats["click_rows"],
            "sessions kept": stats["sessions_kept"],
            "triplets hard / easy": f"{stats['hard_triplets']} / {stats['easy_triplets']}",
            **{
                f"  {name.replace('_', ' ')}": stats[name]
                for name in (
                    "repeat_clicks",
                    "sessions_dropped_multi_click",
                    "clicks_dropped_multi_click",
                    "clicks_dropped_unknown_product",
                    "shown_unknown_product",
                    "easy_negatives_short",
                    "clicks_without_negatives",
                )
                if stats[name]
            },
            "wall time (s)": time.perf_counter() - started,
        },
    )
    return mined.url
