"""The demo path with the pretrained backbone, at a small size, must clear a quality floor.

Runs `vsearch demo --once` on a small synthetic catalogue with the frozen ONNX Xception from
`../shared/models/` (skipped where that file is absent) and reads the JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BACKBONE = REPO.parent / "shared" / "models" / "xception_imagenet_fmap.onnx"


@pytest.mark.skipif(not BACKBONE.is_file(), reason=f"no ONNX backbone at {BACKBONE}")
def test_demo_with_the_pretrained_backbone_clears_the_floor(tmp_path: Path) -> None:
    sets = {
        "storage": str(tmp_path),
        "model.backbone_url": str(BACKBONE),
        "model.if_backbone_missing": "error",
        "data.synthetic.categories": 4,
        "data.synthetic.products_per_category": 6,
        "data.synthetic.views_per_product": 5,
        "data.synthetic.test_views_per_product": 2,
        "data.synthetic.duplicates": 0,
        "train.epochs": 30,
        "train.products_per_batch": 8,
        "demo.scratch_epochs": 0,
    }
    cmd = [str(Path(sys.executable).with_name("vsearch")), "demo", "--once"]
    cmd += ["--config", "configs/demo.yaml"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next((tmp_path / "reports").glob("demo-*.json")).read_text())
    offline, http = report["offline"], report["http"]
    trained = offline["photo_to_catalog"]
    pooled = offline["baseline_pooled_backbone"]["photo_to_catalog"]
    assert offline["backbone"] == "xception_onnx (frozen) + box view"
    # The service and the offline evaluation run the same code: their figures agree.
    assert http["failed_requests"] == 0
    for key in ("recall_at_1", "recall_at_10", "map_at_10"):
        assert http[key] == pytest.approx(trained[key]), key
    # Floors: about 70% of what this configuration measured here (2026-11-30), see the constants.
    assert trained["recall_at_1"] >= FLOOR_R1
    assert trained["map_at_10"] >= pooled["map_at_10"] + FLOOR_MAP_GAIN
    assert offline["category"]["fused_top1"] >= FLOOR_CATEGORY
    assert offline["box"]["iou"] >= FLOOR_IOU


# Measured with the spatial localiser and the box view; the demo config uses the "cells"
# localiser since 2026-11-30 (full demo: IoU 0.618 against 0.591) and reports the box found in
# the box view since 2026-12-01 (this test then measured R@1 0.813, mAP@10 0.863, category
# 0.938, IoU 0.654; with the photos dealt to the workers on the driver, 2026-12-01: R@1 0.813,
# mAP@10 0.874, category 0.938, IoU 0.669). Before the box view (2026-11-22): R@1 0.479, mAP@10
# 0.652 against 0.461, category 0.833.
FLOOR_R1 = 0.55  # measured 0.792 (pooled backbone: 0.333)
FLOOR_CATEGORY = 0.70  # measured 0.958
FLOOR_MAP_GAIN = 0.25  # measured mAP@10 0.865 vs 0.461
FLOOR_IOU = 0.45  # measured 0.586, 0.654 with the box found in the box view (pooled: about 0.43)
