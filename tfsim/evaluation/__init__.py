"""Embedding, exact k-NN and whole-set retrieval metrics."""

from tfsim.evaluation.knn import Neighbors, exact_knn
from tfsim.evaluation.metrics import metrics_from_neighbors, query_mask, retrieval_metrics

__all__ = ["Neighbors", "exact_knn", "metrics_from_neighbors", "query_mask", "retrieval_metrics"]
