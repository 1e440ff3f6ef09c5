"""Tune each shard's search to a recall target instead of a fixed shortlist.

At build time a shard draws held-out probe queries: some of its own vectors, each searched
against the other rows (its own row left out of the results), optionally moved by noise scaled to
its neighbourhood. Exact inner-product search over the shard is the ground truth; the tuning picks
the smallest Hamming shortlist whose float rescoring returns at least ``target`` of the exact
top-``k``, unless an exact scan of the shard's float rows (a shortlist of the whole shard) is
faster.
The manifest records the shortlist and the recall it measured; searchers read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from vsearch.config import IndexConfig
from vsearch.eval.metrics import exact_topk
from vsearch.index.shard import ShardIndex, l2_normalise

__all__ = [
    "NPROBES",
    "SHORTLISTS",
    "Tuning",
    "TuningSpec",
    "exact_rows",
    "probe_queries",
    "tune_search",
    "tuning_spec",
]

#: Inverted lists probed that the tuning of an inverted-file shard tries.
NPROBES: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128, 192, 256)

#: The shortlists tried, cheapest first; a shard no larger than one is searched exhaustively.
SHORTLISTS: tuple[int, ...] = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                               1536, 2048, 4096)  # fmt: skip


#: Probes an exhaustive search is first timed on, to tell whether it could beat the tuned one.
_EXHAUSTIVE_TRIAL = 20

#: Settings whose first timing on the probes is within this factor of the fastest one's are
#: timed again before one is kept: on a shared machine one timing each swaps settings about 25%
#: apart (1M vectors: 24 lists with a shortlist of 32 against 32 lists with 24).
_CONTENDER_FACTOR = 1.5

#: Alternating rounds in which those contenders are timed again (each keeps its fastest time).
_RETIME_ROUNDS = 3

#: The clock the probes are timed with.
_clock = time.perf_counter

#: The defaults of a spec are the index config's (one place for the policy).
_INDEX_DEFAULTS = IndexConfig()


@dataclass(frozen=True)
class TuningSpec:
    """What a shard is tuned to: recall@``k`` >= ``target`` on ``probes`` probe queries made of
    its vectors moved by ``noise`` times their nearest-neighbour distance (``probe_queries``);
    ``seed`` fixes the draw."""

    target: float = _INDEX_DEFAULTS.recall_target
    k: int = _INDEX_DEFAULTS.recall_k
    probes: int = _INDEX_DEFAULTS.probe_queries
    noise: float = _INDEX_DEFAULTS.probe_noise
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"recall target must be in (0, 1], got {self.target}")
        if self.k < 1 or self.probes < 1 or self.noise < 0:
            raise ValueError(f"need k >= 1, probes >= 1, noise >= 0; got {self}")


def tuning_spec(cfg: IndexConfig) -> TuningSpec:
    """The tuning an index config asks for (the reindex job and evaluation both build with it)."""
    return TuningSpec(cfg.recall_target, cfg.recall_k, cfg.probe_queries, cfg.probe_noise)


@dataclass(frozen=True)
class Tuning:
    """The tuned shortlist, the recall@``k`` it reached on ``probes`` probes, and whether that
    met ``target`` (False when even the largest shortlist tried fell short)."""

    shortlist: int
    recall: float
    k: int
    probes: int
    target: float
    reached: bool
    #: Inverted lists probed ("BIVF" engines); None for an exhaustive "BFlat" shard.
    nprobe: int | None = None
    #: Seconds the probes took at these settings (what "cheapest" compared).
    probe_seconds: float = 0.0


def probe_queries(
    vectors: np.ndarray, count: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out probes: ``(rows, queries)``, ``min(count, n)`` distinct rows of ``vectors`` and
    their vectors, each moved in a random direction by ``noise`` times its distance to its
    nearest other row and L2-normalised. The tuning leaves a probe's own row out of both the
    exact and the approximate results, so with ``noise`` 0 a probe is a catalogue image searched
    against the others; with ``noise`` 1 it is about as far from its row as that row's nearest
    neighbour is, whatever the scale of the data."""
    vectors = np.asarray(vectors, dtype=np.float32)  # float16 rescoring vectors widened
    n, d = vectors.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(count, n), replace=False))
    base = vectors[rows]
    if noise == 0:
        return rows, base.copy()
    if n > 1:
        sims = base @ vectors.T
        sims[np.arange(len(rows)), rows] = -np.inf
        nearest = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims.max(axis=1)))[:, None]
    else:
        nearest = np.ones((1, 1), np.float32)
    direction = l2_normalise(rng.standard_normal((len(rows), d)).astype(np.float32))
    return rows, l2_normalise(base + noise * nearest * direction)


def _drop(found: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    """The first ``k`` entries of each row of ``found`` other than that row's ``exclude``."""
    if exclude is None:
        return found[:, :k]
    keep = found != exclude[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, in their order
    return np.take_along_axis(np.where(keep, found, -1), order, axis=1)[:, :k]


def exact_rows(
    vectors: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """``(m, min(k, n)) int64``: each query's exact top-``k`` rows by inner product
    (``vsearch.eval.metrics.exact_topk``: ties to the lower row), leaving out row ``exclude[i]``
    for query ``i`` (padded with -1 where that leaves fewer)."""
    n = len(vectors)
    kk = min(k, n)
    _, ranked = exact_topk(queries, vectors, min(kk + (exclude is not None), n))
    return _drop(ranked, exclude, kk)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist()))
        for f, t in zip(found, truth, strict=True)
    )
    total = int((truth >= 0).sum())
    return hits / total if total else 1.0


def _held_out_recall(
    shard: ShardIndex, rows: np.ndarray, probes: np.ndarray, truth: np.ndarray, k: int,
    shortlist: int, nprobe: int | None,
) -> tuple[float, float]:  # fmt: skip
    """(recall, seconds) of the probes at these settings, each probe's own row left out."""
    found, seconds = _timed_search(shard, probes, k, shortlist, nprobe)
    return _recall(_drop(found, rows, k), truth), seconds


def _timed_search(
    shard: ShardIndex, probes: np.ndarray, k: int, shortlist: int, nprobe: int | None
) -> tuple[np.ndarray, float]:
    """(rows found, seconds) of the probes searched one place deeper (for their own row)."""
    started = _clock()
    _, found = shard.search(probes, k + 1, shortlist + 1, nprobe)
    return found, _clock() - started


def _smallest_shortlist(
    shard: ShardIndex, rows: np.ndarray, probes: np.ndarray, truth: np.ndarray,
    spec: TuningSpec, shortlists: tuple[int, ...], nprobe: int | None,
) -> Tuning:  # fmt: skip
    n = len(shard)
    tried = sorted({min(s, n) for s in shortlists if s >= 1} | {min(max(shortlists), n)})
    recall, seconds = 0.0, 0.0
    for shortlist in tried:
        recall, seconds = _held_out_recall(shard, rows, probes, truth, spec.k, shortlist, nprobe)
        if recall >= spec.target:
            break
    return Tuning(
        shortlist, recall, spec.k, len(probes), spec.target, recall >= spec.target, nprobe, seconds
    )


def tune_search(
    shard: ShardIndex,
    spec: TuningSpec,
    shortlists: tuple[int, ...] = SHORTLISTS,
    nprobes: tuple[int, ...] = NPROBES,
    exhaustive: bool = True,
) -> Tuning:
    """The cheapest search settings of the shard that reach ``spec.target`` recall@k on its
    held-out probe queries (exact search as truth), applied to the shard.

    A "BFlat" shard gets the smallest shortlist of ``shortlists`` that reaches the target. An
    inverted-file shard ("BIVF", PQ or RaBitQ) gets, over ``nprobes``, the smallest such shortlist
    for each number of lists probed and keeps the pair whose probes ran fastest (the close ones
    timed again in alternating rounds: :func:`_fastest`). Either way a
    shortlist of the whole shard (``len(shard)``: the search is then one exact scan of its
    float16 / float32 rescoring rows; not tried for int8 rows) replaces those settings when
    its probes run faster, or when they fall short of the target (``exhaustive=False``:
    never). When nothing reaches the target the largest settings tried are kept and
    ``reached`` is False. A probe's own row is left out of both result lists (searched one
    deeper for it).
    """
    n = len(shard)
    if n <= 1:
        # Nothing to shortlist: any search returns the shard's one row (or none).
        shard.shortlist = spec.k
        return Tuning(spec.k, 1.0, spec.k, 0, spec.target, True, shard.nprobe)
    vectors = shard.float_rows()
    rows, probes = probe_queries(vectors, spec.probes, spec.noise, spec.seed)
    truth = exact_rows(vectors, probes, spec.k, exclude=rows)
    del vectors
    if shard.nprobe is None:
        best = _smallest_shortlist(shard, rows, probes, truth, spec, shortlists, None)
    else:
        nlist = int(shard.nlist or 1)
        options = sorted({min(p, nlist) for p in nprobes if p >= 1})
        found = [
            _smallest_shortlist(shard, rows, probes, truth, spec, shortlists, p) for p in options
        ]
        reached = [t for t in found if t.reached]
        best = (
            _fastest(shard, probes, spec.k, reached)
            if reached
            else max(found, key=lambda t: t.recall)
        )
    if exhaustive:
        best = _exhaustive_if_cheaper(shard, rows, probes, truth, spec, best)
    shard.shortlist = best.shortlist
    shard.nprobe = best.nprobe
    return best


def _fastest(shard: ShardIndex, probes: np.ndarray, k: int, reached: list[Tuning]) -> Tuning:
    """The setting of ``reached`` whose probes run fastest. Those whose first timing is within
    :data:`_CONTENDER_FACTOR` of the fastest are timed again in :data:`_RETIME_ROUNDS`
    alternating rounds (so that a slow spell hits them alike), each keeping its fastest time."""
    first = min(t.probe_seconds for t in reached)
    contenders = [t for t in reached if t.probe_seconds <= _CONTENDER_FACTOR * first]
    if len(contenders) > 1:
        for _ in range(_RETIME_ROUNDS):
            for i, t in enumerate(contenders):
                _, seconds = _timed_search(shard, probes, k, t.shortlist, t.nprobe)
                contenders[i] = replace(t, probe_seconds=min(t.probe_seconds, seconds))
    return min(contenders, key=lambda t: t.probe_seconds)


def _exhaustive_if_cheaper(
    shard: ShardIndex, rows: np.ndarray, probes: np.ndarray, truth: np.ndarray,
    spec: TuningSpec, best: Tuning,
) -> Tuning:  # fmt: skip
    """``best``, or a shortlist of the whole shard (an exact scan of its float rescoring rows;
    never for int8 rows) when that is what reaches the target or its probes run faster. Timed
    first on a few probes, so a shard whose tuned search is far cheaper pays for only those."""
    n = len(shard)
    if best.shortlist >= n or not shard.exact_scan:
        return best
    few = min(len(probes), _EXHAUSTIVE_TRIAL)
    _, seconds = _held_out_recall(
        shard, rows[:few], probes[:few], truth[:few], spec.k, n, best.nprobe
    )
    if best.reached and seconds * len(probes) / few >= best.probe_seconds:
        return best
    recall, seconds = _held_out_recall(shard, rows, probes, truth, spec.k, n, best.nprobe)
    if recall < best.recall or (
        best.reached and (recall < spec.target or seconds >= best.probe_seconds)
    ):
        return best
    return Tuning(
        n, recall, spec.k, len(probes), spec.target, recall >= spec.target, best.nprobe, seconds
    )
