"""Tuning a shard's shortlist to a recall target on probe queries (``vsearch.index.tuning``)."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
import pytest

from vsearch.config import IndexConfig
from vsearch.index import ShardIndex, build_shards, l2_normalise, tuning
from vsearch.index.tuning import (
    NPROBES,
    TuningSpec,
    exact_rows,
    probe_queries,
    tune_search,
    tuning_spec,
)

faiss.omp_set_num_threads(1)


def _meta(n: int, category: str = "c") -> pa.Table:
    return pa.table(
        {
            "image_id": [f"i{i:05d}" for i in range(n)],
            "product_id": [f"p{i:05d}" for i in range(n)],
            "category": [category] * n,
            "title": ["t"] * n,
            "quality": pa.array(np.ones(n), pa.float32()),
            "popularity": pa.array(np.zeros(n), pa.float32()),
        }
    )


def _clustered(n: int, d: int = 64, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    return l2_normalise(centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)))


def _recall(
    shard: ShardIndex, rows: np.ndarray, probes: np.ndarray, k: int, shortlist: int
) -> float:
    """Held-out recall@k: each probe's own row left out of both lists."""
    _, found = shard.search(probes, k + 1, shortlist + 1)
    truth = exact_rows(shard.float_rows(), probes, k, exclude=rows)
    got = [[r for r in f if r != own][:k] for f, own in zip(found, rows, strict=True)]
    return float(np.mean([len(set(g) & set(t)) / k for g, t in zip(got, truth, strict=True)]))


def test_exact_rows_matches_a_sort_and_leaves_out_the_probe() -> None:
    x = _clustered(300)
    _, q = probe_queries(x, 20, 1.0, seed=3)
    expected = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :7]
    assert np.array_equal(exact_rows(x, q, 7), expected)
    assert exact_rows(x[:5], q, 7).shape == (20, 5)
    rows0, q0 = probe_queries(x, 20, 0.0, seed=3)
    assert np.array_equal(q0, x[rows0])
    held = exact_rows(x, q0, 7, exclude=rows0)
    full = np.argsort(-(q0 @ x.T), axis=1, kind="stable")
    assert (held != rows0[:, None]).all()
    assert np.array_equal(held, full[:, 1:8])  # itself first, then the rest in order
    assert (exact_rows(x[:3], x[:3], 7, exclude=np.arange(3)) >= 0).sum(axis=1).tolist() == [2] * 3


def test_noisy_probes_are_near_their_rows_but_not_on_them() -> None:
    x = _clustered(500)
    rows, q = probe_queries(x, 50, 1.0, seed=0)
    assert q.shape == (50, 64) and len(set(rows.tolist())) == 50
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    own = np.einsum("md,md->m", q, x[rows])
    assert (own < 0.999).all() and (own > 0.5).all()
    assert probe_queries(x, 10_000, 1.0, seed=0)[1].shape == (500, 64)  # at most every row


def test_tuned_shortlist_reaches_its_target_on_held_out_probes() -> None:
    shard = ShardIndex.build("s", _clustered(4000), _meta(4000))
    spec = TuningSpec(target=0.9, k=10, probes=200, seed=0)
    tuned = tune_search(shard, spec, exhaustive=False)  # the code shortlist itself
    assert tuned.reached and tuned.recall >= 0.9 and tuned.probes == 200
    assert 10 <= tuned.shortlist < 4000
    # Held out: other probes (another seed) still reach about the target.
    rows, held_out = probe_queries(shard.float_rows(), 300, 0.0, seed=7)
    assert _recall(shard, rows, held_out, 10, tuned.shortlist) >= 0.87
    # It is the cheapest such shortlist: the next smaller one tried falls short on the probes.
    rows, probes = probe_queries(shard.float_rows(), 200, 0.0, seed=0)
    smaller = [s for s in (10, 16, 24, 32, 48, 64, 96, 128, 192, 256) if s < tuned.shortlist]
    if smaller:
        assert _recall(shard, rows, probes, 10, smaller[-1]) < 0.9
    # Noisier probes are harder: they need at least as long a shortlist.
    noisy = tune_search(
        shard, TuningSpec(target=0.9, k=10, probes=200, noise=1.0), exhaustive=False
    )
    assert noisy.shortlist >= tuned.shortlist


def test_small_shard_is_searched_exhaustively_and_unreachable_target_is_reported() -> None:
    small = ShardIndex.build("s", _clustered(30), _meta(30))
    tuned = tune_search(small, TuningSpec(target=1.0))
    assert tuned.reached and tuned.recall == 1.0 and tuned.shortlist <= 30
    big = ShardIndex.build("b", _clustered(3000, seed=1), _meta(3000))
    spec = TuningSpec(target=1.0, probes=50)
    capped = tune_search(big, spec, shortlists=(10, 16), exhaustive=False)
    assert not capped.reached and capped.shortlist == 16 and capped.recall < 1.0
    # Where the shortlists tried fall short, an exact scan of the whole shard reaches it.
    whole = tune_search(big, spec, shortlists=(10, 16))
    assert whole.reached and whole.shortlist == 3000 and whole.recall == 1.0
    assert big.shortlist == 3000


def test_built_shards_carry_their_tuning_into_search_and_manifest() -> None:
    x = _clustered(1200)
    meta = pa.concat_tables([_meta(600, "a"), _meta(600, "b")])
    meta = meta.set_column(0, "image_id", pa.array([f"i{i:05d}" for i in range(1200)]))
    built = build_shards(x, meta, 1, TuningSpec(target=0.9, probes=100))
    for b in built:
        entry, _ = b.package()
        assert entry.shortlist == b.index.shortlist == b.tuning.shortlist
        assert entry.recall is not None and entry.recall >= 0.9
        assert entry.recall_k == 10 and entry.recall_target == 0.9 and entry.probes == 100
        q = probe_queries(b.index.float_rows(), 5, 1.0, seed=2)[1]
        assert np.array_equal(b.index.search(q, 5)[1], b.index.search(q, 5, entry.shortlist)[1])
    untuned = build_shards(x, meta, 1, tuning=None)
    assert untuned[0].package()[0].shortlist is None
    with pytest.raises(ValueError, match="no tuned shortlist"):
        untuned[0].index.search(x[:2], 5)


def test_tuning_spec_from_config() -> None:
    cfg = IndexConfig(recall_target=0.97, recall_k=5, probe_queries=50, probe_noise=0.3)
    assert tuning_spec(cfg) == TuningSpec(target=0.97, k=5, probes=50, noise=0.3)
    with pytest.raises(ValueError, match="recall target"):
        TuningSpec(target=0.0)


@pytest.mark.parametrize(("engine", "prefix"), [("bivf", "BIVF"), ("rabitq", "IVF"), ("pq", "IVF")])
def test_large_shards_get_an_inverted_file_tuned_with_its_shortlist(
    engine: str, prefix: str
) -> None:
    x = _clustered(6000, seed=4)
    shard = ShardIndex.build("s", x, _meta(6000), ivf_above=5000, large_engine=engine)
    assert shard.engine.startswith(prefix) and shard.nprobe is not None
    assert shard.resident_bytes < shard.disk_bytes  # codes are smaller than the rescoring rows
    assert ShardIndex.build("f", x[:100], _meta(100), ivf_above=5000).engine == "BFlat"
    tuned = tune_search(shard, TuningSpec(target=0.9, probes=150), exhaustive=False)
    assert tuned.reached and tuned.nprobe is not None and tuned.recall >= 0.9
    assert (shard.shortlist, shard.nprobe) == (tuned.shortlist, tuned.nprobe)
    rows, held_out = probe_queries(shard.float_rows(), 300, 0.0, seed=9)
    assert _recall(shard, rows, held_out, 10, tuned.shortlist) >= 0.85
    # Settings survive serialisation (the manifest carries them to the searchers).
    again = ShardIndex.from_bytes("s", shard.to_bytes(), tuned.shortlist, tuned.nprobe)
    assert again.engine == shard.engine and again.nprobe == tuned.nprobe
    assert np.array_equal(again.search(held_out[:20], 10)[1], shard.search(held_out[:20], 10)[1])
    # Probing one list can find fewer candidates than asked: padding, never a wrong row.
    scores, found = shard.search(held_out[:50], 10, shortlist=4000, nprobe=1)
    assert ((found >= 0) | np.isneginf(scores)).all()
    exact = l2_normalise(held_out[:50]) @ shard.float_rows().T  # search normalises queries
    ok = found >= 0
    assert np.allclose(
        scores[ok], np.take_along_axis(exact, np.maximum(found, 0), 1)[ok], atol=1e-3
    )
    # A search with an explicit nprobe leaves the tuned one in place.
    assert shard.nprobe == tuned.nprobe


def test_close_settings_are_timed_again_before_one_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fake clock: a search probing p lists takes p seconds, except the first search of a
    # setting whose p is in `spell` (a slow spell of a shared machine during its first timing).
    x = _clustered(6000, seed=4)
    spec = TuningSpec(target=0.9, probes=150)
    clock = [0.0]
    spell: dict[int, float] = {}
    monkeypatch.setattr(tuning, "_clock", lambda: clock[0])
    shard = ShardIndex.build("s", x, _meta(6000), ivf_above=5000, large_engine="pq")
    search = shard.search

    def timed_shard() -> ShardIndex:
        """The shard, its settings' first timings not taken yet."""
        seen: set[tuple[int, int]] = set()

        def timed(q: np.ndarray, k: int, shortlist: int, nprobe: int) -> tuple:
            clock[0] += nprobe if (nprobe, shortlist) in seen else spell.get(nprobe, nprobe)
            seen.add((nprobe, shortlist))
            return search(q, k, shortlist, nprobe)

        shard.search = timed  # type: ignore[method-assign]
        return shard

    # Without a spell the fewest lists that reach the target win; p1: the next setting that does.
    p0 = tune_search(timed_shard(), spec, exhaustive=False).nprobe
    others = tuple(p for p in NPROBES if p != p0)
    p1 = tune_search(timed_shard(), spec, nprobes=others, exhaustive=False).nprobe
    assert p0 is not None and p1 is not None and p0 < p1
    # One slow first timing of p0 (slower than p1's) does not hand the shard to p1.
    spell[p0] = 1.1 * p1
    assert tune_search(timed_shard(), spec, exhaustive=False).nprobe == p0
    # A setting far slower than the fastest is not timed again.
    spell[p0] = 10.0 * p1
    assert tune_search(timed_shard(), spec, exhaustive=False).nprobe != p0


@pytest.mark.parametrize(("engine", "prefix"), [("bivf", "BIVF"), ("rabitq", "IVF"), ("pq", "IVF")])
def test_build_shards_records_engine_and_nprobe(engine: str, prefix: str) -> None:
    x = _clustered(3000, seed=5)
    spec = TuningSpec(target=0.9, probes=100)
    built = build_shards(x, _meta(3000), 1, spec, ivf_above=2000, large_engine=engine)
    entry, _ = built[0].package()
    assert entry.engine.startswith(prefix) and entry.nprobe == built[0].index.nprobe
    assert entry.shortlist == built[0].index.shortlist


def test_a_one_image_shard_is_tuned_too() -> None:
    # A category with a single catalogue image (GroceryStore has several): its shard must be
    # searchable with its tuned settings, like every other.
    x = _clustered(5)
    meta = _meta(5, "big").set_column(2, "category", pa.array(["big"] * 4 + ["one"]))
    built = {b.category: b for b in build_shards(x, meta, 1, TuningSpec(probes=10))}
    one = built["one"]
    assert one.index.shortlist == one.package()[0].shortlist == 10
    _, rows = one.index.search(x[:2], 3)
    assert rows[:, 0].tolist() == [0, 0] and (rows[:, 1:] == -1).all()
