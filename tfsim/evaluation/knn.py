"""Exact k-nearest-neighbour search, blockwise over queries (bounded memory)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfsim import distances


class Neighbors(NamedTuple):
    """The k nearest gallery rows of each query, best first; what exact k-NN and the index return.

    Attributes:
        indices: int64 `[Q, k]` gallery rows.
        scores: float32 `[Q, k]`, oriented so that larger is closer (distances negated).
    """

    indices: np.ndarray
    scores: np.ndarray


def exact_knn(queries: np.ndarray, gallery: np.ndarray, k: int, similarity: str = "cosine",
              exclude_self: bool = False, block_size: int = 1024) -> Neighbors:
    """Top-k gallery items of each query by exhaustive scoring.

    Args:
        queries: float `[Q, D]`.
        gallery: float `[G, D]`.
        k: neighbours per query (capped at the gallery size, minus one with `exclude_self`).
        similarity: a name in `tfsim.distances.DISTANCES`.
        exclude_self: queries *are* the gallery (same rows); a query never retrieves itself.
        block_size: queries scored at once.

    Returns:
        `Neighbors(indices, scores)`.
    """
    sim = distances.get_distance(similarity)
    g = sim.prepare(gallery)
    k = min(k, g.shape[0] - (1 if exclude_self else 0))
    all_scores, all_idx = [], []
    for start in range(0, len(queries), block_size):
        q = queries[start:start + block_size]
        s = sim.score(q, g)
        if exclude_self:
            rows = tf.range(start, start + len(q))
            s = tf.tensor_scatter_nd_update(
                s, tf.stack([tf.range(len(q)), rows], axis=1), tf.fill([len(q)], -np.inf))
        top = tf.math.top_k(s, k=k, sorted=True)
        all_scores.append(top.values.numpy())
        all_idx.append(top.indices.numpy().astype(np.int64))
    return Neighbors(np.concatenate(all_idx), np.concatenate(all_scores).astype(np.float32))
