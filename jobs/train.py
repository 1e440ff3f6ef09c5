"""Job: train the embedder on Ray Train (triplets from labels and clicks), save a model version."""

from __future__ import annotations

import time

from jobs.common import ensure_dataset, print_summary, storage_of
from vsearch.config import Config
from vsearch.runtime.cluster import ray_session
from vsearch.runtime.training import fit
from vsearch.storage import ModelStore
from vsearch.storage.artifacts import new_version


def main(cfg: Config, run_name: str | None = None) -> str:
    """Train; return the new model version. Re-running with the same ``run_name`` resumes."""
    prefix = ensure_dataset(cfg)
    run_name = run_name or new_version("run-")
    started = time.perf_counter()
    with ray_session(cfg.ray):
        artifact, metrics = fit(cfg, prefix, run_name)
    version = ModelStore(storage_of(cfg)).save(artifact)
    print_summary(
        "train",
        {
            "model version": version,
            "run (resume with --run-name)": run_name,
            "workers": cfg.train.num_workers,
            "epochs done": artifact.info["epochs_done"],
            "resumed from epoch": artifact.info["resumed_from_epoch"],
            "training images": metrics.get("train_images", 0),
            "click triplets": metrics.get("click_triplets", 0),
            "skipped images": metrics.get("skipped_images", 0),
            "final loss": metrics.get("loss", float("nan")),
            "wall time (s)": time.perf_counter() - started,
        },
    )
    return version
