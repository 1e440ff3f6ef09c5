"""Job: the nightly refresh. Reindex the catalogue with the latest model, evaluate the new index
version on the configured split, and publish it only if it passes the quality gate against the
published version (``nightly.metric`` may fall by at most ``nightly.tolerance``). The gate is
reported either way and written to ``reports/nightly-<time>.json``; a failed gate leaves the
published version serving.
"""

from __future__ import annotations

import json
from typing import Any

from jobs import evaluate, reindex
from jobs.common import print_summary, storage_of
from vsearch.config import Config
from vsearch.eval.quality import quality_gate, report_value
from vsearch.runtime.cluster import ray_session
from vsearch.storage import IndexStore
from vsearch.storage.artifacts import new_version


def main(cfg: Config) -> dict[str, Any]:
    storage = storage_of(cfg)
    store = IndexStore(storage)
    try:
        published: str | None = store.current()
    except FileNotFoundError:
        published = None
    metric = cfg.nightly.metric
    with ray_session(cfg.ray):
        manifest = reindex.main(cfg, publish=False)
        new_report = evaluate.main(cfg, baseline=False, version=manifest.version)
        old_report = None
        if published is not None:
            old_report = evaluate.main(cfg, baseline=False, version=published)
    new_value = report_value(new_report, metric)
    old_value = report_value(old_report, metric) if old_report is not None else None
    passed, reason = quality_gate(new_value, old_value, cfg.nightly.tolerance)
    if passed:
        store.publish_version(manifest.version)
    serving = store.current() if published is not None or passed else None
    result = {
        "new_version": manifest.version,
        "model_version": manifest.model_version,
        "previously_published": published,
        "metric": metric,
        "new": new_value,
        "published_value": old_value,
        "tolerance": cfg.nightly.tolerance,
        "passed": passed,
        "reason": reason,
        "serving": serving,
    }
    name = f"reports/{new_version('nightly-')}.json"
    storage.write_text(name, json.dumps(result, indent=2))
    print_summary(
        "nightly",
        {
            "new index version": manifest.version,
            "model version": manifest.model_version,
            f"quality gate ({metric})": reason,
            "published": "yes" if passed else "no: the published version keeps serving",
            "serving": serving or "-",
            "report": storage.url(name),
        },
    )
    return result
