"""ScaNN index against brute force (recall and scores, not identity), save/load round trip."""

import numpy as np
import pytest
import tensorflow as tf

from tfsim.errors import UserInputError
from tfsim.evaluation import exact_knn
from tfsim.index import float_search, storage, autotune


def clustered(n, d=32, clusters=40, seed=0):
    """n points around `clusters` fixed centres (the same centres for every seed)."""
    centers = np.random.default_rng(123).normal(size=(clusters, d))
    rng = np.random.default_rng(seed)
    return (centers[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture
def work_not_wall_time(monkeypatch):
    """The tuner times each setting by the work it does (leaves scanned with the quantized scores,
    vectors re-scored exactly), not by the wall clock: its choice, and so the test, does not depend
    on what else the machine runs (on a loaded machine a wall-clock choice once missed the recall below)."""
    real = autotune._timed_search

    def timed(searcher, queries, k, leaves, reorder):
        rows, _ = real(searcher, queries, k, leaves, reorder)
        return rows, len(queries) * (16 * leaves + reorder) * 1e-8

    monkeypatch.setattr(autotune, "_timed_search", timed)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "squared-L2", "L2"])
def test_tree_ah_index_matches_brute_force(similarity, work_not_wall_time):
    gallery, queries = clustered(4000), clustered(200, seed=1)
    searcher, params = float_search.build(gallery, similarity, num_neighbors=10, brute_force_below=1000)
    assert params["mode"] == "tree_ah"
    assert params["measured_recall"] >= 0.95 and params["tuning"]["target_met"]
    index = float_search.GalleryIndex(searcher, np.arange(4000).astype(str), np.zeros(4000, np.int32),
                                     ("c",), similarity, params)
    rows, scores = index.search(queries, 10)
    want_rows, want_scores = exact_knn(queries, gallery, 10, similarity)
    recall = np.mean([len(set(rows[i]) & set(want_rows[i])) / 10 for i in range(len(queries))])
    assert recall >= 0.92, recall  # tuned on gallery vectors, scored here on other queries
    # Reordered results carry exact scores: the best one agrees with brute force where it was found.
    same_top = rows[:, 0] == want_rows[:, 0]
    assert same_top.mean() > 0.85, same_top.mean()
    np.testing.assert_allclose(scores[same_top, 0], want_scores[same_top, 0], rtol=1e-4, atol=1e-4)
    # best first, larger = closer (up to float32 rounding of scores near 50 for dot: a few ulps)
    steps = np.diff(scores, axis=1)
    assert np.all(steps <= 1e-6 * np.maximum(1.0, np.abs(scores[:, :-1]))), steps.max()


def test_queries_whose_searched_leaves_hold_fewer_than_k_get_k_real_neighbours(tmp_path):
    """ScaNN pads a query's results with row 0 and a NaN score when the leaves it searched hold fewer
    than k vectors; the index and its ScaNN retrieval export search those queries over every leaf."""
    from tfsim.export.retrieval import RetrievalModule

    gallery, queries, k = clustered(2000), clustered(100, seed=1), 20
    searcher, params = float_search.build(gallery, "squared-L2", num_neighbors=k, num_leaves=400,
                                          num_leaves_to_search=1, brute_force_below=0)
    assert params["mode"] == "tree_ah" and params["num_leaves_to_search"] == 1
    _, raw = searcher.search_batched(queries, final_num_neighbors=k, leaves_to_search=1)
    assert np.isnan(raw).any(axis=1).mean() > 0.5  # the case under test: most queries come back short
    want_rows, _ = exact_knn(queries, gallery, k, "squared-L2")
    path = storage.save(tmp_path / "idx", searcher, params, [f"id{i}" for i in range(2000)], np.zeros(2000, int),
                        ["c"], "squared-L2", paths=[f"/g/{i}.png" for i in range(2000)],
                        model={"fingerprint": "sha256-files:test", "embedding_dim": 32})
    index = storage.load(path)
    module = RetrievalModule(None, None, index.ids, index.labels, "squared-L2", k, "scann", path / "scann", params)
    # (traced, as the served graph runs it)
    module_rows, module_scores = (t.numpy() for t in tf.function(module._search)(tf.constant(queries)))
    for rows, scores in [index.search(queries, k), (module_rows, -module_scores)]:
        assert np.isfinite(scores).all()
        assert all(len(set(row)) == k for row in rows.tolist())  # k distinct rows, none padded
        recall = np.mean([len(set(rows[i]) & set(want_rows[i])) / k for i in range(len(queries))])
        assert recall >= 0.6, recall  # (one leaf a query: about 0.2)


def test_small_gallery_is_exact_and_round_trips(tmp_path):
    gallery = clustered(300)
    labels = np.arange(300) % 7
    images = np.random.default_rng(0).integers(0, 255, (300, 4, 4, 1), dtype=np.uint8)
    searcher, params = float_search.build(gallery, "cosine", num_neighbors=5)
    assert params["mode"] == "brute_force"
    path = storage.save(tmp_path / "idx", searcher, params, [f"id{i}" for i in range(300)], labels,
                            [f"class{c}" for c in range(7)], "cosine", images=images,
                            model={"fingerprint": "sha256-files:test", "embedding_dim": gallery.shape[1]})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    moved = path.rename(tmp_path / "moved")  # an index must load from wherever it is copied
    loaded = storage.load(moved)
    # Queries that are not gallery rows (a gallery row would find itself in any index).
    queries = clustered(20, seed=5)
    rows, scores = loaded.search(queries, 5)
    want, want_scores = exact_knn(queries, gallery, 5, "cosine")
    np.testing.assert_array_equal(rows, want)  # brute force: exact, all 5 in order
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)
    assert loaded.ids[rows[3, 0]] == f"id{want[3, 0]}"
    assert loaded.class_names[loaded.labels[rows[3, 0]]] == f"class{labels[want[3, 0]]}"
    np.testing.assert_array_equal(loaded.images[5], images[5])
    with pytest.raises(UserInputError, match="already exists"):
        storage.save(moved, searcher, params, ["x"] * 300, labels, ["c"] * 7, "cosine")


def test_load_rejects_non_index(tmp_path):
    with pytest.raises(UserInputError, match="is not a tfsim index"):
        storage.load(tmp_path)


def test_tuning_finds_the_fewest_leaves_per_depth_and_records_what_it_measured():
    gallery = clustered(6000, d=16, clusters=60)
    searcher, params = float_search.build(gallery, "cosine", num_neighbors=5, target_recall=0.9,
                                         brute_force_below=1000, tuning_sample=300)
    tried = {(t["num_leaves_to_search"], t["reorder"]): t["recall"] for t in params["tuning"]["tried"]}
    chosen = (params["num_leaves_to_search"], params["reorder"])
    assert tried[chosen] == params["measured_recall"] >= 0.9 and params["tuning"]["target_met"]
    # Fewest leaves at the chosen depth: one leaf fewer, if tried, misses the target.
    fewer = (chosen[0] - 1, chosen[1])
    assert chosen[0] == 1 or fewer not in tried or tried[fewer] < 0.9
    assert params["num_leaves"] == round(2 * np.sqrt(6000)) and params["queries_per_second"] > 0
    # Recall grows with the leaves searched at each depth (what the doubling and bisection rely on).
    for depth in {d for _, d in tried}:
        recalls = [tried[key] for key in sorted(k for k in tried if k[1] == depth)]
        assert all(b >= a - 0.01 for a, b in zip(recalls, recalls[1:])), (depth, recalls)


class FakeSearcher:
    """Exact search that returns wrong rows for a share of the queries: all right from `full`
    leaves on, and never better than `ceiling` with fewer than `deep` candidates re-scored."""

    def __init__(self, db, full=8, ceiling=0.9, deep=40):
        self.db, self.full, self.ceiling, self.deep, self.calls = db, full, ceiling, deep, []

    def search_batched(self, queries, final_num_neighbors, leaves_to_search, pre_reorder_num_neighbors):
        self.calls.append((leaves_to_search, pre_reorder_num_neighbors))
        rows = exact_knn(queries, self.db, final_num_neighbors, "dot").indices
        deep_enough = pre_reorder_num_neighbors >= self.deep
        share = min(1.0, leaves_to_search / self.full) * (1.0 if deep_enough else self.ceiling)
        wrong = np.arange(len(queries)) >= round(share * len(queries))
        if wrong.any():
            rows[wrong] = exact_knn(-queries[wrong], self.db, final_num_neighbors, "dot").indices  # farthest
        return rows, np.zeros(rows.shape, np.float32)


def test_tuning_logic_on_a_searcher_with_known_recall():
    db = clustered(500, d=8)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    fake = FakeSearcher(db)
    tuned = autotune.tune_search(fake, db, 5, 64, 0.95, "dot_product", sample=100)
    # 0.95 needs >= 40 candidates re-scored and >= 8 leaves: the fewest leaves at a depth >= 40.
    assert tuned["target_met"] and tuned["num_leaves_to_search"] == 8 and tuned["reorder"] >= 40
    assert tuned["measured_recall"] == 1.0 and 0 < len(fake.calls) <= 2 * 30
    # Unreachable: the best recall is kept, and the result says the target was missed.
    low = autotune.tune_search(FakeSearcher(db, full=8, ceiling=0.5), db, 5, 64, 1.0, "dot_product",
                                  sample=100, reorder=20)
    assert not low["target_met"] and low["reorder"] == 20 and low["measured_recall"] == 0.5
    # Near-duplicate clusters: nothing up to k x 16 = 80 re-scored reaches the target; the tuner
    # goes deeper (k x 32 = 160, then k x 64 = 320 >= 300) and stops at the first depth that does.
    deep = FakeSearcher(db, full=8, ceiling=0.5, deep=300)
    tuned = autotune.tune_search(deep, db, 5, 64, 0.95, "dot_product", sample=100)
    assert tuned["target_met"] and tuned["reorder"] == 320 and tuned["num_leaves_to_search"] == 8
    assert max(r for _, r in deep.calls) == 320
    # ... and last the whole gallery (500), which a cluster needing 450 re-scored reaches.
    whole = autotune.tune_search(FakeSearcher(db, full=8, ceiling=0.5, deep=450), db, 5, 64, 0.95,
                                    "dot_product", sample=100)
    assert whole["target_met"] and whole["reorder"] == 500
    # Unreachable even so: the highest recall found is kept, and the result says the target was missed.
    never = autotune.tune_search(FakeSearcher(db, full=8, ceiling=0.5, deep=10_000), db, 5, 64, 0.95,
                                    "dot_product", sample=100)
    assert not never["target_met"] and never["measured_recall"] == 0.5
    with pytest.raises(ValueError, match="target_recall"):
        float_search.build(db, target_recall=1.5)
