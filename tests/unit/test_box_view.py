"""Subject localisation that keeps where things are, and the box view (detect, then embed)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from vsearch.config import ModelConfig
from vsearch.imaging import box_crop, box_window, into_window, out_of_window
from vsearch.models.artifact import ModelArtifact, build_network, initial_artifact
from vsearch.models.embedder import Embedder
from vsearch.models.heads import CellLocaliser, SearchHead, SpatialLocaliser, SubjectLocaliser
from vsearch.runtime.training_data import training_rows
from vsearch.storage import Storage
from vsearch.storage.feature_cache import box_key, box_of_key, round_box


def _hot_spot(row: int, col: int, grid: int = 7, channels: int = 4) -> torch.Tensor:
    fmap = torch.zeros(1, channels, grid, grid)
    fmap[0, 0, row, col] = 10.0
    return fmap


def test_spatial_localiser_finds_where_the_subject_is() -> None:
    loc = SpatialLocaliser(4, hidden=4)
    with torch.no_grad():  # score a cell by its first channel: attention on the hot spot
        loc.reduce.weight.zero_()
        loc.reduce.weight[0, 0] = 1.0
        loc.reduce.bias.zero_()
        loc.score.weight.zero_()
        loc.score.weight[0, 0] = 5.0
    for row, col in ((1, 5), (4, 2), (6, 6)):
        x0, y0, x1, y1 = loc(_hot_spot(row, col))[0].tolist()
        assert (x0 + x1) / 2 == pytest.approx((col + 0.5) / 7, abs=0.02)
        assert (y0 + y1) / 2 == pytest.approx((row + 0.5) / 7, abs=0.02)
    # The pooled localiser sees the same pooled features wherever the spot is: one box.
    pooled = SubjectLocaliser(4)
    torch.testing.assert_close(pooled(_hot_spot(1, 5)), pooled(_hot_spot(5, 1)))


def test_cell_localiser_puts_the_box_around_the_cells_that_see_the_subject() -> None:
    loc = CellLocaliser(4, hidden=4)
    with torch.no_grad():  # attention on the hot spot; every cell says "0.1 to each edge"
        loc.reduce.weight.zero_()
        loc.reduce.weight[0, 0] = 1.0
        loc.reduce.bias.zero_()
        loc.score.weight.zero_()
        loc.score.weight[0, 0] = 5.0
        loc.edges.weight.zero_()
        loc.edges.bias.fill_(math.log(0.1 / 0.9))
    for row, col in ((1, 5), (4, 2), (6, 6)):
        x0, y0, x1, y1 = loc(_hot_spot(row, col))[0].tolist()
        cx, cy = (col + 0.5) / 7, (row + 0.5) / 7
        assert [x0, y0, x1, y1] == pytest.approx([cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1], abs=0.02)
    # Edges between cell centres: the cells' distances move the box, not only the attention.
    with torch.no_grad():
        loc.edges.weight[2, 0] = 0.5  # the hot cell sees the right edge further away
    x0, _, x1, _ = loc(_hot_spot(3, 3))[0].tolist()
    assert x1 - 0.5 > 0.5 - x0 + 0.1


@pytest.mark.parametrize("localiser", ["spatial", "cells"])
def test_localisers_start_centred_and_learn_from_the_metric_loss(localiser: str) -> None:
    from vsearch.models.losses import SupConLoss

    torch.manual_seed(0)
    head = SearchHead(16, 8, localise=True, steepness=10.0, localiser=localiser)
    box = head(torch.randn(3, 16, 5, 5)).box
    torch.testing.assert_close((box[:, :2] + box[:, 2:]) / 2, torch.full((3, 2), 0.5), atol=1e-2,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(box[:, 2:] - box[:, :2], torch.full((3, 2), 0.88), atol=2e-2,
                               rtol=0)  # fmt: skip
    fmap = torch.randn(8, 16, 5, 5)
    SupConLoss(0.1)(head(fmap).embedding, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).backward()
    grads = [p.grad for p in head.localiser.parameters()]
    assert all(g is not None for g in grads) and float(sum(g.abs().sum() for g in grads)) > 0
    with pytest.raises(ValueError, match="localiser"):
        SearchHead(16, 8, localiser="nope")


def test_model_versions_saved_before_it_keep_the_pooled_localiser() -> None:
    cfg = ModelConfig(arch="cnn_tiny", embed_dim=8, input_size=32)
    art = initial_artifact(cfg.model_copy(update={"localiser": "pooled"}), ["a"])
    payload = torch.load(io.BytesIO(art.to_bytes()), weights_only=True)
    del payload["config"]["localiser"]  # as written by earlier versions
    buf = io.BytesIO()
    torch.save(payload, buf)
    old = ModelArtifact.from_bytes(buf.getvalue())
    assert old.config.localiser == "pooled"
    assert isinstance(old.build().head.localiser, SubjectLocaliser)
    assert isinstance(initial_artifact(cfg, ["a"]).build().head.localiser, SpatialLocaliser)


def test_box_crop_is_the_square_around_the_box() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    crop = box_crop(image, [0.25, 0.2, 0.35, 0.6], margin=0.05)  # 20 x 40 px: side 44
    assert crop.shape == (44, 44, 3)
    # 40 x 50 px, side 100 around (20, 25): clipped at the top-left corner.
    assert box_crop(image, [0.0, 0.0, 0.2, 0.5], 0.5).shape == (75, 70, 3)
    assert box_crop(image, [0.5, 0.5, 0.51, 0.51], 0.0) is image  # under 8 px: whole image
    assert box_crop(image, [np.nan, 0, 1, 1], 0.0) is image


def test_a_box_maps_into_the_box_view_and_back() -> None:
    # 100 x 200 image: box 20 x 40 px from (50, 20); its view: the 44 px square around it.
    window = box_window(100, 200, [0.25, 0.2, 0.35, 0.6], margin=0.05)
    assert window == pytest.approx((38 / 200, 18 / 100, 82 / 200, 62 / 100))
    assert box_window(100, 200, [0.5, 0.5, 0.51, 0.51], 0.0) == (0.0, 0.0, 1.0, 1.0)
    truth = [0.28, 0.25, 0.45, 0.55]  # sticks out of the view on the right: clipped
    inside = into_window(truth, window)
    assert inside[2] == 1.0 and 0 < inside[0] < inside[2] and 0 < inside[1] < inside[3] < 1
    back = out_of_window(inside, window)
    assert back[:2] == pytest.approx(truth[:2]) and back[3] == pytest.approx(truth[3])
    assert back[2] == pytest.approx(window[2])
    assert out_of_window([0, 0, 1, 1], window) == pytest.approx(list(window))


def test_the_box_view_joins_the_views_mean() -> None:
    cfg = ModelConfig(arch="cnn_tiny", embed_dim=8, input_size=32)
    torch.manual_seed(0)
    net = build_network(cfg, categories=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 30, 3), dtype=np.uint8) for _ in range(3)]
    plain = Embedder(net, ["a", "b"])
    boxed = Embedder(net, ["a", "b"], box_margin=0.1)
    base = plain.predict(images)
    pred = boxed.predict(images)
    crops = [box_crop(i, b, 0.1) for i, b in zip(images, base.boxes, strict=True)]
    crop_pred = plain.predict(crops)
    mean = base.embeddings + crop_pred.embeddings
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(pred.embeddings, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.boxes, base.boxes)  # the box comes from the first view
    np.testing.assert_allclose(boxed.boxes(plain.feature_maps(images)[0]), base.boxes, atol=1e-6)
    # From maps: the box view's maps given, or the images to cut them from.
    maps = boxed.feature_maps(images)
    with pytest.raises(ValueError, match="box view"):
        boxed.predict_maps(maps)
    done: list[int] = []
    given = boxed.predict_maps(
        maps, box_maps=boxed.box_maps(images, base.boxes), progress=done.append
    )
    np.testing.assert_allclose(given.embeddings, pred.embeddings, rtol=1e-5, atol=1e-6)
    assert sum(done) == len(images) * (maps.shape[0] + 1)  # every view's maps and the box view's
    # Cut from the images here, the box crops' backbone batches are reported too.
    done.clear()
    cut = boxed.predict_maps(maps, images=images, progress=done.append)
    np.testing.assert_allclose(cut.embeddings, pred.embeddings, rtol=1e-5, atol=1e-6)
    assert sum(done) == len(images) * (maps.shape[0] + 2)
    crops: list[int] = []
    np.testing.assert_allclose(boxed.feature_maps(images, progress=crops.append), maps)
    assert sum(crops) == len(images) * maps.shape[0]
    two = Embedder(net, ["a", "b"], views=(1.0, 0.6))
    both = two.feature_maps(images)
    crops.clear()  # the first view alone: one backbone pass per image
    first_view = two.feature_maps(images, progress=crops.append, views=1)
    assert both.shape[0] == 2 and first_view.shape[0] == 1 and sum(crops) == len(images)
    np.testing.assert_allclose(first_view, both[:1])
    with pytest.raises(ValueError, match="views must be between"):
        two.feature_maps(images, views=0)
    assert boxed.predict_maps(maps[:, :0], images=[]).embeddings.shape == (0, 8)
    with pytest.raises(ValueError, match="no box view"):
        plain.box_maps(images, base.boxes)
    art = initial_artifact(cfg.model_copy(update={"box_view": True, "box_margin": 0.2}), ["a"])
    assert (
        art.embedder().box_margin == 0.2
        and initial_artifact(cfg, ["a"]).embedder().box_margin is None
    )


def test_a_refining_model_reports_the_box_found_in_the_box_view() -> None:
    cfg = ModelConfig(arch="cnn_tiny", embed_dim=8, input_size=32)
    torch.manual_seed(0)
    net = build_network(cfg, categories=2)
    with torch.no_grad():  # an untrained localiser boxes the whole image: make it pick a part
        for param in net.head.localiser.parameters():
            param.normal_(0.0, 1.0)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 30 + 10 * i, 3), dtype=np.uint8) for i in range(3)]
    plain = Embedder(net, ["a", "b"])
    boxed = Embedder(net, ["a", "b"], box_margin=0.1)
    refining = Embedder(net, ["a", "b"], box_margin=0.1, refine_box=True)
    first = plain.predict(images).boxes
    crops = [box_crop(i, b, 0.1) for i, b in zip(images, first, strict=True)]
    found = plain.predict(crops).boxes  # the box the heads find in each crop
    expected = [
        out_of_window(f, box_window(img.shape[0], img.shape[1], b, 0.1))
        for f, b, img in zip(found, first, images, strict=True)
    ]
    pred = refining.predict(images)
    np.testing.assert_allclose(pred.boxes, expected, atol=1e-5)
    assert not np.allclose(pred.boxes, first, atol=1e-3)
    # Same embeddings as the plain box view; from maps, the shapes (or images) map boxes back.
    np.testing.assert_allclose(pred.embeddings, boxed.predict(images).embeddings, atol=1e-6)
    maps, box_maps = refining.feature_maps(images), refining.box_maps(images, first)
    shapes = [img.shape for img in images]
    np.testing.assert_allclose(
        refining.predict_maps(maps, box_maps=box_maps, shapes=shapes).boxes, expected, atol=1e-5
    )
    np.testing.assert_allclose(refining.predict_maps(maps, box_maps=box_maps).boxes, first)
    # The flag is the model's: saved with it, ignored without a box view.
    on = cfg.model_copy(update={"box_view": True, "refine_box": True})
    assert initial_artifact(on, ["a"]).embedder().refine_box
    assert not Embedder(net, ["a"], refine_box=True).refine_box


def test_box_view_rows_and_cache_keys() -> None:
    catalog = pa.table({"image_uri": ["c1"], "product_id": ["p"], "category": ["x"]})
    photos = pa.table(
        {"image_uri": ["q1"], "product_id": ["p"], "category": ["x"], "box": [[1.0, 2, 3, 4]]}
    )
    box = round_box([0.12345, 0.5, 0.98765, 1.0])
    assert box == [0.123, 0.5, 0.988, 1.0]
    assert box_key("k", box, 0.05) == "k#box0.123,0.500,0.988,1.000+0.05"
    cat_rows, photo_rows = training_rows(
        catalog, photos, (1.0, 0.5), {"c1": "kc", "q1": "kq"}, {}, {"q1": "kq#box"}
    )
    assert cat_rows.num_rows == 2 and photo_rows.num_rows == 3
    last = photo_rows.to_pylist()[-1]
    assert last["image_uri"] == "q1#view=box" and last["key"] == "kq#box"
    assert all(np.isnan(last["box"])) and photo_rows.to_pylist()[0]["box"] == [1.0, 2, 3, 4]
    assert all(np.isnan(cat_rows.to_pylist()[0]["box"]))  # never null: one column type
    assert box_of_key(box_key("k", box, 0.05)) == (box, 0.05)
    assert box_of_key("k") is None and box_of_key("k#boxa,b+1") is None
    # Refining: the box-view row carries the true box inside the crop (in the column's units:
    # fractions of the crop times the stored image's size). 100 x 200 image, crop as above.
    photos = pa.table(
        {
            "image_uri": ["q1", "q2"],
            "product_id": ["p", "p"],
            "category": ["x", "x"],
            "box": [[56.0, 25, 80, 55], [0.0, 0, 10, 10]],
        }
    )
    keys = {"c1": "kc", "q1": "kq", "q2": "kq2"}
    view = box_key("kq", [0.25, 0.2, 0.35, 0.6], 0.05)
    far = box_key("kq2", [0.7, 0.5, 0.9, 0.9], 0.05)  # q2's subject lies outside its crop
    sizes = {"q1": (200, 100), "q2": (200, 100)}
    _, rows = training_rows(
        catalog, photos, (1.0,), keys, sizes, {"q1": view, "q2": far}, refine_box=True
    )
    refined = {r["image_uri"]: r["box"] for r in rows.to_pylist()}
    window = box_window(100, 200, [0.25, 0.2, 0.35, 0.6], 0.05)
    inside = into_window([56 / 200, 25 / 100, 80 / 200, 55 / 100], window)
    assert refined["q1#view=box"] == pytest.approx(
        [inside[0] * 200, inside[1] * 100, inside[2] * 200, inside[3] * 100], rel=1e-6
    )
    assert all(np.isnan(refined["q2#view=box"])) and refined["q1"] == [56.0, 25, 80, 55]


def test_map_encoder_cuts_box_views(tmp_path: Path, tiny_onnx: bytes) -> None:
    from vsearch.runtime.features import MapEncoder

    storage = Storage(str(tmp_path))
    storage.write_bytes("bb.onnx", tiny_onnx)
    buf = io.BytesIO()
    ramp = np.linspace(0, 255, 80, dtype=np.uint8)[None, :, None].repeat(60, 0).repeat(3, 2)
    Image.fromarray(ramp).save(buf, format="PNG")
    storage.write_bytes("a.png", buf.getvalue())
    enc = MapEncoder(storage.root, {}, "xception_onnx", storage.url("bb.onnx"), 10**7, box_margin=0)
    whole = MapEncoder(storage.root, {}, "xception_onnx", storage.url("bb.onnx"), 10**7)
    uri = np.array([storage.url("a.png"), storage.url("a.png")])
    out = enc({"uri": uri, "key": np.array(["left", "right"]),
               "box": np.array([[0.0, 0.2, 0.3, 0.6], [0.7, 0.2, 1.0, 0.6]])})  # fmt: skip
    assert list(out["key"]) == ["left", "right"] and list(out["error"]) == ["", ""]
    ref = whole({"uri": uri[:1], "key": np.array(["k"])})["map"][0]
    assert not np.array_equal(out["map"][0], out["map"][1])
    assert not np.array_equal(out["map"][0], ref)
