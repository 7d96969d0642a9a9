"""Exact k-nearest-neighbour search, blockwise over queries (bounded memory)."""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Union

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


def knn_blocks(queries: np.ndarray, gallery: np.ndarray, k: Union[int, Callable[[int, int], int]],
               similarity: str = "cosine", exclude_self: bool = False,
               block_size: int = 1024) -> Iterator[tuple[int, Neighbors]]:
    """Exact top-k gallery items, one block of queries at a time: yields `(start, Neighbors)`.

    Memory is one block's `[block_size, G]` scores and `[block_size, k]` results, whatever
    the number of queries. Ties in score keep the lower gallery row first (`tf.math.top_k`).

    Args:
        queries: float `[Q, D]`.
        gallery: float `[G, D]`.
        k: neighbours per query, or `k(start, stop)` for the block of queries `start:stop`
            (capped at the gallery size, minus one with `exclude_self`).
        similarity: a name in `tfsim.distances.DISTANCES`.
        exclude_self: queries *are* the gallery (same rows); a query never retrieves itself.
        block_size: queries scored at once.
    """
    sim = distances.get_distance(similarity)
    g = sim.prepare(gallery)
    cap = g.shape[0] - (1 if exclude_self else 0)
    for start in range(0, len(queries), block_size):
        q = queries[start:start + block_size]
        block_k = min(k(start, start + len(q)) if callable(k) else k, cap)
        s = sim.score(q, g)
        if exclude_self:
            rows = tf.range(start, start + len(q))
            s = tf.tensor_scatter_nd_update(
                s, tf.stack([tf.range(len(q)), rows], axis=1), tf.fill([len(q)], -np.inf))
        top = tf.math.top_k(s, k=block_k, sorted=True)
        yield start, Neighbors(top.indices.numpy().astype(np.int64), top.values.numpy().astype(np.float32))


def exact_knn(queries: np.ndarray, gallery: np.ndarray, k: int, similarity: str = "cosine",
              exclude_self: bool = False, block_size: int = 1024) -> Neighbors:
    """Top-k gallery items of each query by exhaustive scoring (`knn_blocks`, concatenated).

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
    blocks = [n for _, n in knn_blocks(queries, gallery, k, similarity, exclude_self, block_size)]
    return Neighbors(np.concatenate([b.indices for b in blocks]), np.concatenate([b.scores for b in blocks]))
