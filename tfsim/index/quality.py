"""How close an approximate index comes to exact search: the retrieval metrics of a gallery's
ScaNN index (`ann_metrics`), and their gap to exact k-NN on a sample of queries.

The evaluate command's `--ann` reports them beside the exact figures.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tfsim.evaluation.knn import exact_knn
from tfsim.evaluation.metrics import metric_sums, metrics_from_neighbors, progress_bar
from tfsim.index.float_search import GalleryIndex, build


def ann_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                similarity: str = "cosine", query_mask: Optional[np.ndarray] = None, sample: int = 2000,
                seed: int = 0, block_size: int = 4096, progress: bool = False, **index_options) -> dict:
    """The metrics of `retrieval_metrics`, with neighbours from a ScaNN index of the gallery
    (`tfsim.index.float_search.build`; `index_options` go to it), and the gap to exact search.

    Each query asks the index for `max(K, R_q)` neighbours (one more, minus itself, when it is
    in the gallery). The gap is measured on a seeded sample of `sample` queries, searched both by
    the index and exhaustively the same way: "gap" holds ANN minus exact for each metric.

    Returns:
        The ANN metrics (keys as `metrics_from_neighbors`), "gap" and "gap_sample".
    """
    labels = np.asarray(labels)
    if query_mask is None:
        q_rows = np.arange(len(labels))
        g_rows = q_rows
    else:
        query_mask = np.asarray(query_mask, bool)
        q_rows, g_rows = np.flatnonzero(query_mask), np.flatnonzero(~query_mask)
    gallery, gallery_labels = embeddings[g_rows], labels[g_rows]
    self_in = query_mask is None
    per_label = dict(zip(*np.unique(gallery_labels, return_counts=True)))
    num_relevant = np.array([per_label.get(y, 0) - int(self_in) for y in labels[q_rows]])
    k = int(min(max(max(ks), num_relevant.max(initial=0)) + int(self_in), len(g_rows)))
    searcher, params = build(gallery, similarity, num_neighbors=k, **index_options)
    index = GalleryIndex(searcher, np.asarray(g_rows).astype(str), gallery_labels, (), similarity, params)

    def neighbours(rows: np.ndarray, exact: bool) -> np.ndarray:
        """Gallery labels of each query's neighbours, itself removed when in the gallery."""
        found = (exact_knn(embeddings[rows], gallery, k, similarity).indices if exact
                 else index.search(embeddings[rows], k).indices)
        if self_in:  # gallery row == embeddings row here: drop the query itself (or the last one)
            keep = found != rows[:, None]
            keep[keep.all(axis=1), -1] = False
            found = found[keep].reshape(len(rows), k - 1)
        return gallery_labels[found]

    totals: dict = {}
    count = 0
    bar = progress_bar(len(q_rows)) if progress else None
    for start in range(0, len(q_rows), block_size):
        rows = q_rows[start:start + block_size]
        sums, n = metric_sums(neighbours(rows, False), labels[rows], num_relevant[start:start + len(rows)], ks)
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + value
        count += n
        if bar is not None:
            bar.add(len(rows))
    out = {name: (value / count if count else float("nan")) for name, value in totals.items()}
    out["num_queries"] = count
    pick = np.sort(np.random.default_rng(seed).choice(len(q_rows), min(sample, len(q_rows)), replace=False))
    rows = q_rows[pick]
    approx = metrics_from_neighbors(neighbours(rows, False), labels[rows], num_relevant[pick], ks)
    exact = metrics_from_neighbors(neighbours(rows, True), labels[rows], num_relevant[pick], ks)
    out["gap"] = {name: approx[name] - exact[name] for name in approx if name != "num_queries"}
    out["gap_sample"] = int(len(rows))
    out["index"] = params
    return out
