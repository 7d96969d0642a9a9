"""`tfsim.metrics`: the query / gallery form against a naive float64 loop, the same figures as one set
with a query mask, and the errors."""

import numpy as np
import pytest

import tfsim.metrics


def naive_query_gallery(queries, query_labels, gallery, gallery_labels, ks):
    """Per-query float64 loop over a separate gallery (cosine)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    out = {f"recall@{k}": [] for k in ks}
    out["map@r"] = []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: (-float(q[i] @ g[j]), j))
        rel = [gallery_labels[j] == query_labels[i] for j in order]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            out[f"recall@{k}"].append(float(any(rel[:k])))
        hits, ap = 0, 0.0
        for rank in range(r):
            if rel[rank]:
                hits += 1
                ap += hits / (rank + 1)
        out["map@r"].append(ap / r)
    return {k: float(np.mean(v)) for k, v in out.items()}, len(out["map@r"])


@pytest.mark.parametrize("seed", [0, 1])
def test_query_gallery_form_matches_a_naive_loop(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 6))
    yq, yg = rng.integers(0, 5, 25), rng.integers(0, 4, 40)  # class 4 has no gallery item: its queries skipped
    q, g = centres[yq] + rng.normal(size=(25, 6)), centres[yg] + rng.normal(size=(40, 6))
    got = tfsim.metrics.retrieval_metrics(q, yq, ks=(1, 2, 4), gallery=(g, yg), block_size=7)
    want, count = naive_query_gallery(q, yq, g, yg, (1, 2, 4))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["num_queries"] == count == int((yq != 4).sum())
    # The same as one set whose query rows search its gallery rows.
    mask = np.r_[np.ones(25, bool), np.zeros(40, bool)]
    one_set = tfsim.metrics.retrieval_metrics(np.r_[q, g], np.r_[yq, yg], ks=(1, 2, 4), query_mask=mask)
    assert {k: one_set[k] for k in want} == pytest.approx({k: got[k] for k in want}, abs=1e-12)


def test_public_names():
    assert set(tfsim.metrics.__all__) == {"retrieval_metrics", "metrics_from_neighbors", "clustering_metrics"}
    assert all(callable(getattr(tfsim.metrics, name)) for name in tfsim.metrics.__all__)


@pytest.mark.parametrize("kwargs,message", [
    (dict(labels=np.zeros(3)), "one per row"),
    (dict(embeddings=np.zeros(10)), r"\[N, D\]"),
    (dict(gallery=(np.zeros((4, 3)), np.zeros(4)), query_mask=np.ones(10, bool)), "not both"),
    (dict(gallery=np.zeros((4, 3))), "a pair"),
    (dict(gallery=(np.zeros((4, 3)), np.zeros(3))), "gallery labels"),
    (dict(gallery=(np.ones((12, 4)), np.zeros(12))), "gallery`: its embeddings have dimension 4, the queries' 3"),
    (dict(ks=(8,), gallery=(np.ones((4, 3)), np.zeros(4))), "at least 8 gallery items"),
])
def test_clear_errors(kwargs, message):
    args = {"embeddings": np.random.default_rng(0).normal(size=(10, 3)), "labels": np.arange(10) % 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        tfsim.metrics.retrieval_metrics(**args)
