"""Job: put the configured dataset (synthetic by default) on storage."""

from __future__ import annotations

from jobs.common import load_dataset, print_summary, storage_of
from vsearch.config import Config


def main(cfg: Config) -> str:
    ds = load_dataset(cfg)
    splits = ds.queries.group_by("split").aggregate([("query_id", "count")]).to_pylist()
    print_summary(
        "dataset",
        {
            "source": cfg.data.source,
            "location": storage_of(cfg).url(f"datasets/{cfg.data.source}"),
            "catalogue images": ds.catalog.num_rows,
            "products": len(set(ds.catalog["product_id"].to_pylist())),
            "categories": len(set(ds.catalog["category"].to_pylist())),
            **{f"queries ({r['split']})": r["query_id_count"] for r in splits},
            "click sessions": ds.clicks.num_rows if ds.clicks is not None else 0,
            "duplicate listings": ds.duplicates.num_rows if ds.duplicates is not None else 0,
        },
    )
    return f"datasets/{cfg.data.source}"
