"""Retrieval metrics over a whole evaluation set (never averaged per batch).

Definitions (Musgrave, Belongie & Lim, "A Metric Learning Reality Check",
ECCV 2020, arXiv:2003.08505), for a query q with R_q relevant gallery items
(same class, q itself excluded):

* Recall@K: 1 if any of the K nearest items is relevant, else 0; averaged over queries.
* R-precision: (relevant items among the R_q nearest) / R_q.
* MAP@R: (1/R_q) * sum_{i=1..R_q} P(i) * rel(i), with P(i) the precision at rank i.
* Precision@K: relevant items among the K nearest, / K.
* mAP: average precision over the whole ranking (all G items; `full_ranking=True`).

Queries without any relevant item (singleton classes) are skipped and counted.
Leave-one-out by default; a query / gallery split (In-Shop) with `query_mask`.

Ties in score rank the lower gallery row first. Memory is bounded by the query block, not by
the set: `retrieval_metrics` scores `block_size` queries at a time against the gallery and
keeps, per block, `max(K, largest R_q in the block)` neighbours, so the extra memory is about
`block_size * (4 G + 24 k)` bytes for a gallery of G items and k kept neighbours, plus the
gallery itself (1024 queries against 60,000 x 512 in 10 classes: ~0.25 GB of scores and
~0.15 GB of neighbours), where keeping every query's R_q neighbours at once took 14.8 GB.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tfsim.evaluation.knn import knn_blocks

# Whole-set metrics computed only on request: mAP over the whole ranking, NMI and AMI of k-means.
WHOLE_SET_METRICS = ("map", "nmi", "ami")


def metric_sums(neighbor_labels: np.ndarray, query_labels: np.ndarray, num_relevant: np.ndarray,
                 ks: Sequence[int], per_class: Optional[dict] = None, full_ranking: bool = False) -> tuple[dict, int]:
    """Per-metric sums over the queries with R_q > 0, and their count (see `metrics_from_neighbors`):
    summed over blocks of queries and divided by the total count, they give the whole-set metrics.

    `per_class`: a dict that receives, per query label, `[queries, recall@1 hits, MAP@R sum]`."""
    if neighbor_labels.shape[1] < max(ks):
        raise ValueError(f"Need at least {max(ks)} neighbours per query for Recall@{max(ks)}; "
                         f"got {neighbor_labels.shape[1]}.")
    keep = num_relevant > 0
    hits = neighbor_labels[keep] == np.asarray(query_labels)[keep, None]
    r = num_relevant[keep]
    sums = {f"recall@{k}": float(hits[:, :k].any(axis=1).sum()) for k in ks}
    sums.update({f"precision@{k}": float(hits[:, :k].sum() / k) for k in ks})
    ranks = np.arange(1, hits.shape[1] + 1)
    relevant_within_r = hits & (ranks[None, :] <= r[:, None])
    precision_at_i = np.cumsum(hits, axis=1, dtype=np.int64) / ranks[None, :]
    sums["r_precision"] = float((relevant_within_r.sum(axis=1) / r).sum())
    per_query_map = (precision_at_i * relevant_within_r).sum(axis=1) / r
    sums["map@r"] = float(per_query_map.sum())
    if full_ranking:  # every gallery item ranked: average precision over the whole ranking
        sums["map"] = float(((precision_at_i * hits).sum(axis=1) / r).sum())
    if per_class is not None:  # per query class: [queries, recall@1 hits, MAP@R sum]
        for label, hit, ap in zip(np.asarray(query_labels)[keep], hits[:, 0], per_query_map):
            entry = per_class.setdefault(int(label), [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += float(hit)
            entry[2] += float(ap)
    return sums, int(keep.sum())


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
    sums, count = metric_sums(neighbor_labels, query_labels, num_relevant, ks)
    out = {name: (value / count if count else float("nan")) for name, value in sums.items()}
    out["num_queries"] = count
    return out


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                      similarity: str = "cosine", query_mask: Optional[np.ndarray] = None,
                      block_size: int = 1024, per_class: bool = False, full_ranking: bool = False,
                      progress: bool = False, gallery: Optional[tuple] = None) -> dict:
    """Retrieval metrics over a whole set, exactly.

    Leave-one-out (default): every item queries all the others. With `query_mask`, the
    rows where it is true query the rows where it is false (the gallery), as In-Shop's
    query / gallery protocol does; a query is then never in its own gallery. With
    `gallery=(gallery_embeddings, gallery_labels)`, every row of `embeddings` queries that
    separate gallery.

    Args:
        embeddings: float `[N, D]` (the queries, with `gallery`).
        labels: int `[N]`.
        ks: the K of Recall@K.
        similarity: a name in `tfsim.distances.DISTANCES`.
        query_mask: bool `[N]`, or None for leave-one-out.
        block_size: queries scored at once (memory: see the module doc).
        per_class: also return "per_class": {label: {"queries", "recall@1", "map@r"}} over
            each class's queries (for a breakdown by class).
        full_ranking: also "map", the mean average precision over each query's whole
            ranking (every gallery item sorted: costlier; blocks shrink to keep memory near
            1 GB).
        progress: show a progress bar over the queries searched.
        gallery: `(embeddings [G, D], labels [G])` searched by every row of `embeddings`
            (not with `query_mask`), or None.

    Returns:
        See `metrics_from_neighbors`.

    Raises:
        ValueError: mismatched lengths, a gallery of another dimension than the queries, `gallery`
            with `query_mask`, a gallery smaller than max(ks).

    Example:
        >>> retrieval_metrics(model.predict(x_test), y_test, ks=(1, 2))["recall@1"]
    """
    labels = np.asarray(labels).reshape(-1)
    _check_rows(embeddings, labels, "embeddings", "labels")
    leave_one_out = query_mask is None and gallery is None
    if gallery is not None:
        if query_mask is not None:
            raise ValueError("Invalid arguments: pass either `query_mask` (rows of one set query the others) or "
                             "`gallery` (a separate gallery), not both.")
        try:
            gallery, gallery_labels = gallery
        except (TypeError, ValueError):
            raise ValueError("Invalid value for `gallery`: expected a pair (gallery_embeddings, gallery_labels). "
                             f"Received: gallery of type {type(gallery).__name__}") from None
        gallery_labels = np.asarray(gallery_labels).reshape(-1)
        _check_rows(gallery, gallery_labels, "gallery embeddings", "gallery labels")
        if np.shape(gallery)[1] != np.shape(embeddings)[1]:
            raise ValueError(f"Invalid value for `gallery`: its embeddings have dimension {np.shape(gallery)[1]}, the "
                             f"queries' {np.shape(embeddings)[1]}; expected the same dimension (embed both with the "
                             "same model).")
        queries, query_labels = embeddings, labels
    elif query_mask is None:
        queries, query_labels, gallery, gallery_labels = embeddings, labels, embeddings, labels
    else:
        query_mask = np.asarray(query_mask, bool)
        queries, query_labels = embeddings[query_mask], labels[query_mask]
        gallery, gallery_labels = embeddings[~query_mask], labels[~query_mask]
    per_label = dict(zip(*np.unique(gallery_labels, return_counts=True)))
    self_in_gallery = 1 if leave_one_out else 0
    num_relevant = np.array([per_label.get(y, 0) - self_in_gallery for y in query_labels])
    if len(gallery_labels) - self_in_gallery < max(ks):
        raise ValueError(f"Need at least {max(ks)} gallery items per query for Recall@{max(ks)}; the gallery "
                         f"has {len(gallery_labels) - self_in_gallery}.")
    # Blockwise over queries: each block keeps its own max(K, R_q) neighbours, so memory is one
    # block's scores and neighbours whatever the class sizes (see the module doc for the bound).
    totals: dict = {}
    classes: Optional[dict] = {} if per_class else None
    count = 0
    if full_ranking:
        whole = len(gallery_labels)
        k_of = lambda a, b: whole  # noqa: E731  (capped to the gallery minus the query itself)
        block_size = max(8, min(block_size, (1 << 25) // max(whole, 1)))
    else:
        k_of = lambda a, b: int(max(max(ks), num_relevant[a:b].max()))  # noqa: E731
    bar = progress_bar(len(query_labels)) if progress else None
    for start, block in knn_blocks(queries, gallery, k_of, similarity, exclude_self=leave_one_out,
                                   block_size=block_size):
        stop = start + len(block.indices)
        sums, n = metric_sums(gallery_labels[block.indices], query_labels[start:stop], num_relevant[start:stop], ks,
                               classes, full_ranking)
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + value
        count += n
        if bar is not None:
            bar.add(stop - start)
    out = {name: (value / count if count else float("nan")) for name, value in totals.items()}
    out["num_queries"] = count
    if classes is not None:
        out["per_class"] = {label: {"queries": n, "recall@1": hits / n, "map@r": ap / n}
                            for label, (n, hits, ap) in sorted(classes.items())}
    return out


def _check_rows(embeddings, labels: np.ndarray, what: str, what_labels: str) -> None:
    """Raises ValueError unless `embeddings` is `[N, D]` with one label per row."""
    shape = np.shape(embeddings)
    if len(shape) != 2:
        raise ValueError(f"Invalid {what}: expected a float array [N, D] (one row per item). Received: shape {shape}")
    if shape[0] != len(labels):
        raise ValueError(f"Invalid {what_labels}: expected one per row of the {what} ({shape[0]}). Received: "
                         f"{len(labels)} labels")


def progress_bar(queries: int):
    """A progress bar over `queries` queries searched."""
    import keras  # lazy: the metrics themselves need only NumPy and the k-NN

    return keras.utils.Progbar(queries, unit_name="query")


def query_mask(splits: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The query rows of a held-out set whose source splits it into "query" and "gallery"
    (In-Shop), else None (leave-one-out)."""
    if splits is None:
        return None
    splits = np.asarray(splits)
    if not ((splits == "query").any() and (splits == "gallery").any()):
        return None
    return splits == "query"


def clustering_metrics(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """NMI and AMI of k-means clusters (k = the number of classes) against the labels.

    scikit-learn's `KMeans` (on L2-normalised embeddings, `n_init=1`, seeded) and its
    `normalized_mutual_info_score` / `adjusted_mutual_info_score`. k-means costs
    O(N x classes x D) per iteration: the evaluate command skips it above 1,000 classes.
    """
    from sklearn.cluster import KMeans  # lazy: scikit-learn takes seconds to import, for two metrics
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    classes = len(np.unique(labels))
    clusters = KMeans(n_clusters=classes, n_init=1, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ami": float(adjusted_mutual_info_score(labels, clusters))}
