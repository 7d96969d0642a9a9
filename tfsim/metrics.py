"""Retrieval metrics of embeddings, for your own code: whole-set Recall@K, MAP@R, R-precision.

    m = tfsim.metrics.retrieval_metrics(model.predict(x_test), y_test)
    m["recall@1"], m["map@r"], m["r_precision"], m["precision@2"], m["num_queries"]
    tfsim.metrics.retrieval_metrics(queries, query_labels, gallery=(gallery, gallery_labels))

Definitions as Musgrave, Belongie & Lim, "A Metric Learning Reality Check" (ECCV 2020,
arXiv:2003.08505), computed over the whole set (never averaged per batch), exactly and in
bounded memory (blockwise over queries); leave-one-out by default, or a query / gallery split
(`gallery=`, or `query_mask=` over one set). The implementation is
`tfsim.evaluation.metrics`, the one the training pipeline and the evaluate command use.

* `retrieval_metrics(embeddings, labels, ks=(1, 2, 4, 8), similarity="cosine", ...)`:
  {"recall@K", "precision@K", "r_precision", "map@r", "num_queries"} (+ "map" with
  `full_ranking=True`, "per_class" with `per_class=True`).
* `metrics_from_neighbors(neighbor_labels, query_labels, num_relevant, ks)`: the same from
  ranked neighbour labels you searched yourself (e.g. with `tfsim.index`).
* `clustering_metrics(embeddings, labels)`: NMI and AMI of k-means clusters (scikit-learn).
"""

from tfsim.evaluation.metrics import clustering_metrics, metrics_from_neighbors, retrieval_metrics

__all__ = ["clustering_metrics", "metrics_from_neighbors", "retrieval_metrics"]
