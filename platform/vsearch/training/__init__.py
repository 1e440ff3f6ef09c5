"""Triplet training of the embedder, independent of how it is distributed (Ray Train wraps it)."""

from vsearch.training.dataset import TrainingSet
from vsearch.training.trainer import MetricTrainer

__all__ = ["MetricTrainer", "TrainingSet"]
