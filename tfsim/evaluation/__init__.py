"""Embedding, exact k-NN, whole-set retrieval metrics and calibration (a "same class?" threshold,
`tfsim.evaluation.calibration`); `tfsim.metrics` and `tfsim.calibration` are their public faces."""

from tfsim.evaluation.knn import Neighbors, exact_knn
from tfsim.evaluation.metrics import metrics_from_neighbors, query_mask, retrieval_metrics

__all__ = ["Neighbors", "exact_knn", "metrics_from_neighbors", "query_mask", "retrieval_metrics"]
