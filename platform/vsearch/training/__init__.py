"""Triplet training of the embedder, independent of how it is distributed (Ray Train wraps it)."""

from vsearch.training.dataset import TrainingSet
from vsearch.training.trainer import TripletTrainer

__all__ = ["TrainingSet", "TripletTrainer"]
