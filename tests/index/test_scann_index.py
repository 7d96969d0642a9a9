"""ScaNN index against brute force (recall and scores, not identity), save/load round trip."""

import numpy as np
import pytest

from tfsim.errors import UserInputError
from tfsim.evaluation import exact_knn
from tfsim.index import scann_index


def clustered(n, d=32, clusters=40, seed=0):
    """n points around `clusters` fixed centres (the same centres for every seed)."""
    centers = np.random.default_rng(123).normal(size=(clusters, d))
    rng = np.random.default_rng(seed)
    return (centers[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "squared-L2", "L2"])
def test_tree_ah_index_matches_brute_force(similarity):
    gallery, queries = clustered(4000), clustered(200, seed=1)
    searcher, params = scann_index.build(gallery, similarity, num_neighbors=10)
    assert params["mode"] == "tree_ah"
    index = scann_index.GalleryIndex(searcher, np.arange(4000).astype(str), np.zeros(4000, np.int32),
                                     ("c",), similarity, params)
    rows, scores = index.search(queries, 10)
    want_rows, want_scores = exact_knn(queries, gallery, 10, similarity)
    recall = np.mean([len(set(rows[i]) & set(want_rows[i])) / 10 for i in range(len(queries))])
    assert recall >= 0.95, recall
    # Reordered results carry exact scores: the best one agrees with brute force where it was found.
    same_top = rows[:, 0] == want_rows[:, 0]
    assert same_top.mean() > 0.95
    np.testing.assert_allclose(scores[same_top, 0], want_scores[same_top, 0], rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-5)  # best first, larger = closer


def test_small_gallery_is_exact_and_round_trips(tmp_path):
    gallery = clustered(300)
    labels = np.arange(300) % 7
    images = np.random.default_rng(0).integers(0, 255, (300, 4, 4, 1), dtype=np.uint8)
    searcher, params = scann_index.build(gallery, "cosine", num_neighbors=5)
    assert params["mode"] == "brute_force"
    path = scann_index.save(tmp_path / "idx", searcher, params, [f"id{i}" for i in range(300)], labels,
                            [f"class{c}" for c in range(7)], "cosine", images=images)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    moved = path.rename(tmp_path / "moved")  # an index must load from wherever it is copied
    loaded = scann_index.load(moved)
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
        scann_index.save(moved, searcher, params, ["x"] * 300, labels, ["c"] * 7, "cosine")


def test_load_rejects_non_index(tmp_path):
    with pytest.raises(UserInputError, match="is not a tfsim index"):
        scann_index.load(tmp_path)
