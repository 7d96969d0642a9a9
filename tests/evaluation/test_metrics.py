"""Retrieval metrics against a naive per-query reference, and golden hand-computed values."""

import numpy as np
import pytest

from tfsim.evaluation import exact_knn, metrics_from_neighbors, retrieval_metrics


def naive_metrics(x, labels, ks, is_query=None):
    """Per-query float64 loop; `is_query`: those rows query the other rows (In-Shop's protocol)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = {f"recall@{k}": [] for k in ks}
    out["map@r"], out["r_precision"] = [], []
    for q in range(len(x)):
        if is_query is not None and not is_query[q]:
            continue
        others = [i for i in range(len(x)) if i != q and (is_query is None or not is_query[i])]
        order = sorted(others, key=lambda i: -float(x[q] @ x[i]))
        rel = [labels[i] == labels[q] for i in order]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            out[f"recall@{k}"].append(float(any(rel[:k])))
            out.setdefault(f"precision@{k}", []).append(sum(rel[:k]) / k)
        hits, total = 0, 0.0
        for i, is_rel in enumerate(rel):  # average precision over the whole ranking
            if is_rel:
                hits += 1
                total += hits / (i + 1)
        out.setdefault("map", []).append(total / r)
        out["r_precision"].append(sum(rel[:r]) / r)
        ap, hits = 0.0, 0
        for i in range(r):
            if rel[i]:
                hits += 1
                ap += hits / (i + 1)
        out["map@r"].append(ap / r)
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=70)
    labels[0] = 99  # a singleton class: skipped
    centers = rng.normal(size=(100, 8))
    x = centers[labels] + 1.2 * rng.normal(size=(70, 8))
    got = retrieval_metrics(x, labels, ks=(1, 2, 4, 8), full_ranking=True)
    want = naive_metrics(x, labels, (1, 2, 4, 8))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["num_queries"] == 69


def test_golden_map_at_r():
    # One query, R = 3 relevant: ranks 1 and 3 relevant, rank 2 not.
    # MAP@R = (1/3) * (1/1 + 2/3) = 0.5556; R-precision = 2/3; Recall@1 = 1.
    got = metrics_from_neighbors(np.array([[1, 0, 1, 1, 0]]), np.array([1]), np.array([3]), ks=(1, 2))
    assert got["map@r"] == pytest.approx((1 + 2 / 3) / 3)
    assert got["r_precision"] == pytest.approx(2 / 3)
    assert got["recall@1"] == 1.0 and got["recall@2"] == 1.0


def test_exact_knn_excludes_self_and_orders_by_score():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    idx, scores = exact_knn(x, x, 3, "cosine", exclude_self=True, block_size=3)
    assert idx[0].tolist() == [1, 2, 3] and idx[3][0] != 3
    assert np.all(np.diff(scores, axis=1) <= 0)
    idx_l2 = exact_knn(x, x, 3, "L2", exclude_self=True).indices
    assert idx_l2[0][0] == 1


def test_perfect_and_random_embeddings():
    labels = np.repeat(np.arange(5), 10)
    perfect = np.eye(5)[labels] + 1e-3 * np.random.default_rng(0).normal(size=(50, 5))
    m = retrieval_metrics(perfect, labels)
    assert m["recall@1"] == 1.0 and m["map@r"] == pytest.approx(1.0)
    # Random embeddings, 20 classes x 50 images: each neighbour is of the query's class with
    # probability 49/999, so Recall@1 ~ 0.049, Recall@8 ~ 1 - (1 - 0.049)^8 ~ 0.33, and MAP@R,
    # R-precision ~ 0.049 (chance). 1,000 queries: sd of Recall@1 ~ 0.007.
    labels = np.repeat(np.arange(20), 50)
    m = retrieval_metrics(np.random.default_rng(1).normal(size=(1000, 64)), labels, ks=(1, 8))
    chance = 49 / 999
    assert m["recall@1"] == pytest.approx(chance, abs=0.025)
    assert m["recall@8"] == pytest.approx(1 - (1 - chance) ** 8, abs=0.05)
    assert m["r_precision"] == pytest.approx(chance, abs=0.01)
    assert m["map@r"] < 2 * chance


@pytest.mark.parametrize("name", ["cosine", "dot", "L2", "squared-L2"])
def test_each_distance_scores_like_a_naive_loop(name):
    from tfsim import distances
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    d = distances.get_distance(name)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    naive = {"cosine": lambda a, b: unit(a) @ unit(b), "dot": lambda a, b: a @ b,
             "L2": lambda a, b: -np.linalg.norm(a - b), "squared-L2": lambda a, b: -np.sum((a - b) ** 2)}[name]
    want = np.array([[naive(a, b) for b in g] for a in q])
    np.testing.assert_allclose(d.score(q, g).numpy(), want, rtol=1e-5, atol=1e-5)
    assert d.larger_is_closer == (name in ("cosine", "dot"))
    neighbors = exact_knn(q, g, 3, name)
    np.testing.assert_array_equal(neighbors.indices, np.argsort(-want, axis=1)[:, :3])
    np.testing.assert_allclose(neighbors.scores, np.sort(want, axis=1)[:, ::-1][:, :3], rtol=1e-5, atol=1e-5)


def test_loss_distance_names_map_to_the_same_objects():
    import tensorflow as tf
    from tfsim import distances
    x = tf.constant(np.random.default_rng(5).normal(size=(6, 4)), tf.float32)
    np.testing.assert_allclose(distances.pairwise_distances(x, "angular").numpy(),
                               np.maximum(1 - distances.get_distance("cosine").score(x, x).numpy(), 0), atol=1e-6)
    np.testing.assert_allclose(distances.pairwise_distances(x, "squared-L2").numpy(),
                               -distances.get_distance("squared-L2").score(x, x).numpy() * (1 - np.eye(6)), atol=1e-5)
    with pytest.raises(ValueError, match=r"Invalid value for `distance`: expected one of"):
        distances.get_distance("angular")  # tfa's name exists only at the losses' boundary
    with pytest.raises(ValueError, match=r"Invalid value for `distance_metric`"):
        distances.pairwise_distances(x, "cosine")


@pytest.mark.parametrize("seed", [0, 1])
def test_query_gallery_protocol_matches_naive_reference(seed):
    from tfsim.evaluation import query_mask
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, size=90)
    splits = np.where(rng.uniform(size=90) < 0.3, "query", "gallery")
    splits[labels == 7] = "query"  # a class with queries only: no relevant gallery item, skipped
    x = rng.normal(size=(20, 8))[labels] + 1.2 * rng.normal(size=(90, 8))
    mask = query_mask(splits)
    got = retrieval_metrics(x, labels, ks=(1, 2, 4, 8), query_mask=mask, full_ranking=True)
    want = naive_metrics(x, labels, (1, 2, 4, 8), is_query=mask)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["num_queries"] == int((mask & (labels != 7)).sum())
    assert query_mask(np.array(["train", "test"])) is None and query_mask(None) is None
    assert query_mask(np.array(["query", "query"])) is None  # no gallery: leave-one-out


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_blockwise_metrics_equal_the_naive_reference_with_very_unequal_classes(block_size):
    rng = np.random.default_rng(5)
    sizes = [120, 40, 9, 3, 2, 2, 1, 1, 1]  # one huge class, small ones, singletons
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    order = rng.permutation(len(labels))
    labels = labels[order]
    x = rng.normal(size=(len(sizes), 6))[labels] + 1.5 * rng.normal(size=(len(labels), 6))
    want = naive_metrics(x, labels, (1, 2, 4, 8))
    got = retrieval_metrics(x, labels, ks=(1, 2, 4, 8), block_size=block_size, full_ranking=True)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["num_queries"] == len(labels) - 3  # the three singletons have no relevant item
    mask = rng.uniform(size=len(labels)) < 0.4
    want = naive_metrics(x, labels, (1, 2, 4, 8), is_query=mask)
    got = retrieval_metrics(x, labels, ks=(1, 2, 4, 8), query_mask=mask, block_size=block_size, full_ranking=True)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_ties_rank_the_lower_gallery_row_first():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0-2 identical
    labels = np.array([0, 1, 0, 1])
    n = exact_knn(x, x, 2, exclude_self=True)
    assert n.indices[0].tolist() == [1, 2] and n.indices[2].tolist() == [0, 1]
    # Row 0's nearest is row 1 (another class, tied with row 2): a miss at K=1, a hit at K=2.
    m = retrieval_metrics(x[:3], labels[:3], ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 2) and m["recall@2"] == 1.0


def test_clustering_metrics():
    from tfsim.evaluation.metrics import clustering_metrics
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    separated = np.eye(8)[labels] + 0.01 * rng.normal(size=(100, 8))
    assert clustering_metrics(separated, labels) == {"nmi": pytest.approx(1.0), "ami": pytest.approx(1.0)}
    noise = clustering_metrics(rng.normal(size=(100, 8)), labels)
    assert noise["ami"] < 0.1 and 0 <= noise["nmi"] < 0.2


@pytest.mark.slow  # over a second: kept out of the fast tier
@pytest.mark.parametrize("n, exact_mode", [(300, True), (3000, False)])
def test_ann_metrics_and_their_gap_to_exact(n, exact_mode):
    from tfsim.index.quality import ann_metrics
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, n)
    x = rng.normal(size=(30, 16))[labels] + 0.8 * rng.normal(size=(n, 16))
    exact = retrieval_metrics(x, labels)
    got = ann_metrics(x, labels, sample=500, brute_force_below=1000)
    assert got["index"]["mode"] == ("brute_force" if exact_mode else "tree_ah")
    if exact_mode:  # below 1,000 items the index scores exhaustively: no gap
        for key in ("recall@1", "recall@8", "map@r", "r_precision"):
            assert got[key] == pytest.approx(exact[key], abs=1e-9)
            assert got["gap"][key] == pytest.approx(0.0, abs=1e-9)
    else:  # a tree: close to exact, and the measured gap says how close
        assert abs(got["recall@1"] - exact["recall@1"]) < 0.03 and abs(got["map@r"] - exact["map@r"]) < 0.05
        assert -0.05 < got["gap"]["map@r"] <= 0.01
    assert got["num_queries"] == exact["num_queries"] and got["gap_sample"] == min(500, n)
    mask = rng.uniform(size=n) < 0.3
    qg = ann_metrics(x, labels, query_mask=mask, sample=200, brute_force_below=1000)
    want = retrieval_metrics(x, labels, query_mask=mask)
    assert qg["num_queries"] == want["num_queries"] and abs(qg["recall@1"] - want["recall@1"]) < 0.03
