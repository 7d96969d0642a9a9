"""Retrieval metrics over a whole evaluation set (never averaged per batch).

Definitions (Musgrave, Belongie & Lim, "A Metric Learning Reality Check",
ECCV 2020, arXiv:2003.08505), for a query q with R_q relevant gallery items
(same class, q itself excluded):

* Recall@K: 1 if any of the K nearest items is relevant, else 0; averaged over queries.
* R-precision: (relevant items among the R_q nearest) / R_q.
* MAP@R: (1/R_q) * sum_{i=1..R_q} P(i) * rel(i), with P(i) the precision at rank i.
* mAP: average precision over the whole ranking (all G items).

Queries without any relevant item (singleton classes) are skipped and counted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tfsim.evaluation.knn import exact_knn


def metrics_from_neighbors(neighbor_labels: np.ndarray, query_labels: np.ndarray,
                           num_relevant: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8)) -> dict:
    """Recall@K, R-precision and MAP@R from ranked neighbour labels.

    Args:
        neighbor_labels: `[Q, k]` labels of each query's neighbours, best first; k must
            be >= max(ks) and >= max(num_relevant) for exact MAP@R.
        query_labels: `[Q]`.
        num_relevant: `[Q]` R_q, relevant items in the gallery per query (self excluded).
        ks: the K of Recall@K.

    Returns:
        dict with "recall@K" for each K, "r_precision", "map@r" (floats) and
        "num_queries" (queries with R_q > 0).
    """
    if neighbor_labels.shape[1] < max(ks):
        raise ValueError(f"Need at least {max(ks)} neighbours per query for Recall@{max(ks)}; "
                         f"got {neighbor_labels.shape[1]}.")
    keep = num_relevant > 0
    hits = neighbor_labels[keep] == np.asarray(query_labels)[keep, None]
    r = num_relevant[keep]
    out = {f"recall@{k}": float(np.mean(hits[:, :k].any(axis=1))) for k in ks}
    ranks = np.arange(1, hits.shape[1] + 1)
    within_r = ranks[None, :] <= r[:, None]
    precision_at_i = np.cumsum(hits, axis=1) / ranks[None, :]
    out["r_precision"] = float(np.mean((hits & within_r).sum(axis=1) / r))
    out["map@r"] = float(np.mean((precision_at_i * (hits & within_r)).sum(axis=1) / r))
    out["num_queries"] = int(keep.sum())
    return out


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                      similarity: str = "cosine") -> dict:
    """Leave-one-out retrieval metrics: every item queries all the others, exactly.

    Args:
        embeddings: float `[N, D]`.
        labels: int `[N]`.
        ks: the K of Recall@K.
        similarity: a name in `tfsim.distances.DISTANCES`.

    Returns:
        See `metrics_from_neighbors`.
    """
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_inverse=False, return_counts=True)
    per_label = dict(zip(np.unique(labels), counts))
    num_relevant = np.array([per_label[y] - 1 for y in labels])
    k = int(max(max(ks), num_relevant.max()))
    idx = exact_knn(embeddings, embeddings, k, similarity, exclude_self=True).indices
    return metrics_from_neighbors(labels[idx], labels, num_relevant, ks)
