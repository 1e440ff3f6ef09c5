"""The text channel of an index version and hybrid (photo + text) ranking, with a fake encoder
(the MiniLM service path is covered by tests/integration/test_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vsearch.index import Hit, build_shards
from vsearch.index.text import TextChannel, product_titles
from vsearch.rank import Reranker
from vsearch.rank.hybrid import rank_products
from vsearch.rank.routing import images_to_fetch, products_to_rank
from vsearch.storage import IndexStore, Storage

WORDS = ["red", "blue", "green", "shoe", "bag", "lamp"]


class BagOfWords:
    """A deterministic stand-in for the text model: normalised word counts; counts calls."""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.encoded += texts
        out = np.zeros((len(texts), len(WORDS)), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                if word in WORDS:
                    out[i, WORDS.index(word)] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.where(norms > 0, out / np.maximum(norms, 1e-12), 0)


def test_product_titles_one_per_product() -> None:
    table = pa.table(
        {"product_id": ["a", "b", "a", None], "title": ["red shoe", None, "other", "x"]}
    )
    assert product_titles(table) == (["a", "b"], ["red shoe", ""])


def test_build_reuses_unchanged_titles_and_round_trips() -> None:
    encode = BagOfWords()
    base = TextChannel.build(["a", "b", "c"], ["red shoe", "blue bag", "lamp"], encode, "bow")
    assert base.vectors.dtype == np.float16 and base.dim == len(WORDS)
    encode.encoded.clear()
    # b renamed, c removed, d new: only b's and d's titles are embedded again.
    new = TextChannel.build(["a", "b", "d"], ["red shoe", "green bag", "red lamp"], encode, "bow",
                            base=base)  # fmt: skip
    assert sorted(encode.encoded) == ["green bag", "red lamp"]
    assert np.array_equal(new.vectors[0], base.vectors[0])
    # Another model re-embeds everything.
    encode.encoded.clear()
    TextChannel.build(["a"], ["red shoe"], encode, "other-model", base=base)
    assert encode.encoded == ["red shoe"]
    again = TextChannel.from_bytes(new.to_bytes())
    assert again.product_ids == new.product_ids and again.titles == new.titles
    assert again.model == "bow" and np.array_equal(again.vectors, new.vectors)


def test_similarities_and_unknown_products() -> None:
    channel = TextChannel.build(["a", "b"], ["red shoe", "blue bag"], BagOfWords(), "bow")
    query = BagOfWords()(["red shoe"])[0]
    sims = channel.similarities(query, ["a", "b", "zzz"])
    assert sims[0] == pytest.approx(1.0, abs=1e-3) and sims[1] == pytest.approx(0.0)
    assert np.isnan(sims[2])
    with pytest.raises(ValueError, match="dimension"):
        channel.similarities(np.ones(3, np.float32), ["a"])


def _hit(product: str, score: float) -> Hit:
    return Hit(score, f"img-{product}", product, "c", product, 0.0, 0.0, "s")


def test_text_re_scores_the_photo_s_products() -> None:
    channel = TextChannel.build(
        ["p0", "p1", "p2", "p3"], ["blue bag", "green lamp", "red shoe", "blue lamp"],
        BagOfWords(), "bow",
    )  # fmt: skip
    hits = [_hit("p0", 0.90), _hit("p1", 0.85), _hit("p2", 0.80), _hit("p3", 0.70)]
    reranker = Reranker()
    photo_only = rank_products(reranker, hits, 2)
    assert [p.product_id for p in photo_only] == ["p0", "p1"]
    assert all(p.text_similarity is None for p in photo_only)
    query = BagOfWords()(["red shoe"])[0]
    hybrid = rank_products(reranker, hits, 2, query, channel, weight=0.4)
    # The third product by photo matches the words and comes first.
    assert hybrid[0].product_id == "p2"
    assert hybrid[0].score == pytest.approx(0.6 * 0.80 + 0.4 * 1.0, abs=1e-3)
    assert hybrid[0].text_similarity == pytest.approx(1.0, abs=1e-3)
    assert hybrid[0].similarity == pytest.approx(0.80)
    # Weight 0: the photo's order, with the text similarity reported.
    same = rank_products(reranker, hits, 2, query, channel, weight=0.0)
    assert [p.product_id for p in same] == ["p0", "p1"]
    with pytest.raises(ValueError, match="weight"):
        rank_products(reranker, hits, 2, query, channel, weight=1.5)


def test_hybrid_over_fetch() -> None:
    assert products_to_rank(10) == 10 and products_to_rank(10, hybrid=True) == 50
    assert images_to_fetch(10, hybrid=True) == 5 * images_to_fetch(10)


def test_store_writes_verifies_and_keeps_the_channel(tmp_path: Path) -> None:
    store = IndexStore(Storage(str(tmp_path)))
    rng = np.random.default_rng(0)
    meta = pa.table(
        {
            "image_id": [f"i{i}" for i in range(8)],
            "product_id": [f"p{i}" for i in range(8)],
            "category": ["a"] * 8,
            "title": ["red shoe"] * 8,
            "quality": pa.array([1.0] * 8, pa.float32()),
            "popularity": pa.array([0.0] * 8, pa.float32()),
        }
    )
    built = build_shards(rng.normal(size=(8, 16)).astype(np.float32), meta, 1)
    manifest = store.write_version("i1", built, "m1", 16, {})
    assert store.load_text(manifest) is None  # no channel: none loaded
    channel = TextChannel.build([f"p{i}" for i in range(8)], ["red shoe"] * 8, BagOfWords(), "bow")
    manifest = manifest.model_copy(update={"text": store.write_text("i1", channel)})
    store.publish(manifest)
    loaded = store.load_text(store.manifest())
    assert loaded is not None and loaded.product_ids == channel.product_ids
    assert store.manifest().text is not None and store.manifest().text.products == 8
    # A later version that shares the file keeps the folder that holds it.
    shared = manifest.model_copy(
        update={"version": "i2", "text": manifest.text.model_copy(update={"location": "i1"})}
    )
    assert "i1" in shared.referenced_versions
    victim = tmp_path / "indexes" / "i1" / "text" / "titles.npz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"titles\.npz: checksum mismatch"):
        store.load_text(manifest)
    with pytest.raises(ValueError, match=r"titles\.npz"):
        store.publish_version("i1")
