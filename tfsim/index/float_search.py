"""Float search: a ScaNN searcher over a gallery of embeddings, and `GalleryIndex`, a searcher
with the row -> image id/label mapping.

Search results are oriented so that larger scores are closer, whatever the similarity
(`tfsim.distances.DISTANCES`), and returned as the same `Neighbors` as `evaluation.exact_knn`;
that is what lets tests compare ScaNN to brute force by recall and by scores. A `GalleryIndex`
may also hold a `tfsim.index.hamming.HammingSearcher` (mode "hamming"): its scores are minus
the Hamming distance.

Parameters: galleries under `BRUTE_FORCE_BELOW` items are scored exhaustively; larger ones use
a k-means tree of ~2 sqrt(G) leaves, anisotropic quantisation (2 dims per block, threshold 0.2)
and exact re-scoring, and the index tunes itself (`build` -> `tfsim.index.autotune.tune_search`):
it measures recall@k against exact search on a sample of gallery vectors and keeps the fastest
number of leaves searched and re-scoring depth that reach `target_recall`; index.json records
both (`tfsim.index.storage`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from tfsim import distances
from tfsim.evaluation.knn import Neighbors
from tfsim.index.autotune import tune_search

log = logging.getLogger(__name__)
# Below this many items the index scores every item (exact, and about as fast at that size).
BRUTE_FORCE_BELOW = 20_000
# The k-means tree is trained on at most this many vectors (ScaNN's own examples use 250k).
TRAINING_SAMPLE = 250_000


def scann_ops():
    """ScaNN's pybind module (`scann.scann_ops_pybind`)."""
    try:
        from scann import scann_ops_pybind  # lazy: loads ScaNN's native library, needed only to build or load
    except ImportError as err:  # pragma: no cover - scann is a hard dependency
        raise ImportError("tfsim's index needs `scann==1.4.2` (pip install scann==1.4.2).") from err
    return scann_ops_pybind


@dataclasses.dataclass
class GalleryIndex:
    """A loaded (or freshly built) index and its gallery metadata."""

    searcher: object
    ids: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    similarity: str
    params: dict
    images: Optional[np.ndarray] = None
    paths: Optional[np.ndarray] = None
    meta: Optional[dict] = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def search(self, queries: np.ndarray, k: int) -> Neighbors:
        """Top-k gallery rows of each query.

        Args:
            queries: float `[Q, D]` (raw embeddings; normalised here if the similarity needs it).
            k: neighbours, at most the gallery size.

        Returns:
            `Neighbors(indices [Q, k] gallery rows, scores [Q, k])`, best first, larger = closer.
        """
        k = min(int(k), len(self))
        if self.params.get("mode") == "hamming":  # scores: minus the Hamming distance
            rows, scores = self.searcher.search_batched(np.atleast_2d(queries), final_num_neighbors=k,
                                                        lists_to_search=self.params.get("num_lists_to_search"))
            return Neighbors(rows.astype(np.int64), scores.astype(np.float32))
        sim = distances.get_distance(self.similarity)
        q = np.asarray(sim.prepare(np.atleast_2d(queries)).numpy(), np.float32)
        if self.params.get("mode") == "tree_ah":  # the tuned settings (see `build`)
            def tree_search(vectors, leaves):
                rows, raw = self.searcher.search_batched(vectors, final_num_neighbors=k, leaves_to_search=int(leaves),
                                                         pre_reorder_num_neighbors=max(int(self.params["reorder"]), k))
                return np.array(rows), np.array(raw)

            rows, raw = tree_search(q, self.params["num_leaves_to_search"])
            if raw.shape[1] < k:  # (as wide as the longest result)
                rows = np.pad(rows, [(0, 0), (0, k - raw.shape[1])])
                raw = np.pad(raw, [(0, 0), (0, k - raw.shape[1])], constant_values=np.nan)
            # ScaNN pads a query's results with row 0 and a NaN score when the leaves it searched hold
            # fewer than k vectors: those queries are searched again over every leaf.
            short = ~np.isfinite(raw).all(axis=1)
            if short.any():
                rows[short], raw[short] = tree_search(q[short], self.params["num_leaves"])
        else:
            rows, raw = self.searcher.search_batched(q, final_num_neighbors=k)
        scores = raw if sim.larger_is_closer else -raw
        if sim.name == "L2":
            scores = -np.sqrt(np.maximum(-scores, 0.0))
        return Neighbors(rows.astype(np.int64), scores.astype(np.float32))


def tf_complete_short(rows: tf.Tensor, raw: tf.Tensor, queries: tf.Tensor, k: int, search_every_leaf):
    """ScaNN's TF-op results `rows, raw [N, <= k]` with each short query searched again over every leaf.

    ScaNN pads a query's results with row 0 and a NaN distance when the leaves it searched hold
    fewer than k vectors (and its TF op returns only as many columns as the longest result).
    `search_every_leaf(queries)` returns `(rows, raw)` of those queries searched over every leaf;
    only the short queries are searched again (as `GalleryIndex.search` does), so a served model
    answers each query as the index does.
    """
    missing = k - tf.shape(raw)[1]  # (the op's results are only as wide as the longest query's)
    rows = tf.pad(rows, [[0, 0], [0, missing]])
    raw = tf.pad(raw, [[0, 0], [0, missing]], constant_values=float("nan"))
    short = tf.where(tf.logical_not(tf.reduce_all(tf.math.is_finite(raw), axis=1)))

    def redo():
        again_rows, again_raw = search_every_leaf(tf.gather_nd(queries, short))
        return (tf.tensor_scatter_nd_update(rows, short, tf.cast(again_rows, rows.dtype)),
                tf.tensor_scatter_nd_update(raw, short, tf.cast(again_raw, raw.dtype)))

    return tf.cond(tf.size(short) > 0, redo, lambda: (rows, raw))


def build_options(index_config) -> dict:
    """`build`'s keyword arguments from an `IndexConfig`."""
    keys = ("num_neighbors", "num_leaves", "num_leaves_to_search", "reorder", "dims_per_block",
            "anisotropic_threshold", "target_recall", "brute_force_below")
    return {key: getattr(index_config, key) for key in keys}


def build(embeddings: np.ndarray, similarity: str = "cosine", num_neighbors: int = 10, num_leaves: int = 0,
          num_leaves_to_search: int = 0, reorder: int = 0, dims_per_block: int = 2,
          anisotropic_threshold: float = 0.2, target_recall: float = 0.95,
          brute_force_below: int = BRUTE_FORCE_BELOW, tuning_sample: int = 1000, seed: int = 0):
    """Builds a ScaNN searcher over `embeddings` `[G, D]` that tunes its own search settings.

    Galleries under `brute_force_below` items (and no `num_leaves` asked for) are scored
    exhaustively: exact, and fast enough at that size. Larger ones get a k-means tree of
    `num_leaves` (0: 2 sqrt(G)) leaves trained on at most `TRAINING_SAMPLE` vectors,
    anisotropic quantisation (`dims_per_block` dims per block) and exact re-scoring; the leaves
    searched and the re-scoring depth are then chosen by `tune_search` to reach `target_recall`
    at `num_neighbors` as fast as possible (or taken as given when non-zero; recall is measured
    either way). `GalleryIndex.search` applies them.

    Returns:
        `(searcher, params)`: the ScaNN searcher and the parameters used, with what the tuning
        measured ("measured_recall", "queries_per_second", "tuning").
    """
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"Expected a non-empty [G, D] gallery; got shape {embeddings.shape}.")
    if not 0 < target_recall <= 1:
        raise ValueError(f"Invalid target_recall {target_recall}: expected a recall in (0, 1], e.g. 0.95.")
    sim = distances.get_distance(similarity)
    db = np.asarray(sim.prepare(embeddings).numpy(), np.float32)
    g = len(db)
    k = min(num_neighbors, g)
    start = time.perf_counter()
    builder = scann_ops().builder(db, k, sim.scann_measure)
    if g < brute_force_below and not num_leaves:
        searcher = builder.score_brute_force().build()
        params = {"mode": "brute_force"}
    else:
        leaves = min(num_leaves or max(2, int(round(2 * math.sqrt(g)))), g)
        aq = sim.scann_measure == "dot_product"
        builder = builder.tree(num_leaves=leaves, num_leaves_to_search=num_leaves_to_search or max(1, leaves // 10),
                               training_sample_size=min(g, TRAINING_SAMPLE), spherical=aq and sim.normalize,
                               quantize_centroids=False)
        if aq:
            builder = builder.score_ah(dims_per_block, anisotropic_quantization_threshold=anisotropic_threshold)
        else:
            builder = builder.score_ah(dims_per_block)
        searcher = builder.reorder(max(reorder, k)).build()  # (search passes the tuned depth)
        build_seconds = time.perf_counter() - start
        tuned = tune_search(searcher, db, k, leaves, target_recall, sim.scann_measure, tuning_sample, seed,
                            num_leaves_to_search, reorder)
        params = {"mode": "tree_ah", "num_leaves": leaves, "num_leaves_to_search": tuned["num_leaves_to_search"],
                  "dims_per_block": dims_per_block, "anisotropic_threshold": anisotropic_threshold,
                  "reorder": tuned["reorder"], "training_sample_size": min(g, TRAINING_SAMPLE),
                  "target_recall": target_recall, "measured_recall": tuned["measured_recall"],
                  "queries_per_second": tuned["queries_per_second"], "build_seconds": build_seconds,
                  "tuning_seconds": time.perf_counter() - start - build_seconds,
                  "tuning": {key: tuned[key] for key in ("sample", "target_met", "tried")}}
        if not tuned["target_met"]:
            log.warning("The index reaches recall@%d %.3f at best, below index.target_recall %.3f: raise "
                        "index.num_leaves or index.dims_per_block.", k, tuned["measured_recall"], target_recall)
        log.info("ScaNN index over %d items: %d leaves, %d searched, reorder %d: recall@%d %.3f (target %.3f) on "
                 "%d gallery queries, %.0f queries/s.", g, leaves, params["num_leaves_to_search"], params["reorder"],
                 k, tuned["measured_recall"], target_recall, tuned["sample"], tuned["queries_per_second"])
    params.update(num_neighbors=k, distance_measure=sim.scann_measure, size=g, dim=int(db.shape[1]))
    return searcher, params
