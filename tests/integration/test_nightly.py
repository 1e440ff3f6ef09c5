"""``vsearch nightly``: reindex, evaluate, and publish only past the quality gate; a failed gate
leaves the published version serving."""

from __future__ import annotations

import json

import pytest

from vsearch.config import Config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_nightly_publishes_behind_the_quality_gate(
    tiny_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import nightly, train
    from vsearch.storage import IndexStore, Storage

    cfg = tiny_config.model_copy(
        update={"nightly": tiny_config.nightly.model_copy(update={"tolerance": 0.0})}
    )
    train.main(cfg)
    store = IndexStore(Storage(cfg.storage))

    first = nightly.main(cfg)  # nothing published yet: the gate passes
    assert first["passed"] and first["previously_published"] is None
    assert store.current() == first["new_version"] == first["serving"]

    second = nightly.main(cfg)  # same model, same catalogue: the same recall, within tolerance 0
    assert second["passed"] and second["new"] == pytest.approx(second["published_value"])
    assert store.current() == second["new_version"] != first["new_version"]

    # A new version that scores lower than the published one by more than the tolerance is
    # written and evaluated, but not published.
    scores = iter([0.10, 0.90])  # new version first, then the published one
    monkeypatch.setattr(nightly, "report_value", lambda report, key: next(scores))
    third = nightly.main(cfg)
    assert not third["passed"] and "failed" in third["reason"]
    assert store.current() == second["new_version"] == third["serving"]
    assert any(v["version"] == third["new_version"] for v in store.versions())
    reports = Storage(cfg.storage).list("reports")
    saved = [
        json.loads(Storage(cfg.storage).read_text(f"reports/{n}"))
        for n in reports
        if n.startswith("nightly-")
    ]
    assert sorted(r["passed"] for r in saved) == [False, True, True]
