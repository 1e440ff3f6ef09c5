"""Evaluation: retrieval quality metrics (Recall@K, mAP, ANN recall), exact search, latency."""
