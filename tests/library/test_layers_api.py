"""`tfsim.layers.Retrieval` and `ScannRetrieval`: keras-rs's retrieval contract checked against a
naive float64 brute force (ties included), and the candidates saved with the model: `.keras`,
weights files and SavedModel give back the same ids, after the candidates changed in number."""

import functools

import numpy as np
import pytest
import tensorflow as tf

import keras
from tfsim.layers import Retrieval, ScannRetrieval

RNG = np.random.default_rng(7)
CANDIDATES = RNG.normal(size=(20, 6)).astype(np.float32)
QUERIES = RNG.normal(size=(5, 6)).astype(np.float32)
STRING_IDS = np.array([f"item/{i:02d}" for i in range(20)])


def naive_scores(queries, candidates, similarity):
    """`[Q, G]` scores, larger is closer, one pair at a time in float64."""
    out = np.zeros((len(queries), len(candidates)))
    for i, q in enumerate(queries.astype(np.float64)):
        for j, c in enumerate(candidates.astype(np.float64)):
            if similarity == "cosine":
                out[i, j] = sum(a * b for a, b in zip(q, c)) / (np.sqrt(sum(q * q)) * np.sqrt(sum(c * c)))
            elif similarity == "dot":
                out[i, j] = sum(a * b for a, b in zip(q, c))
            elif similarity == "squared-L2":
                out[i, j] = -sum((a - b) ** 2 for a, b in zip(q, c))
            else:
                out[i, j] = -np.sqrt(sum((a - b) ** 2 for a, b in zip(q, c)))
    return out


def brute_force(queries, candidates, k, similarity="cosine"):
    scores = naive_scores(queries, candidates, similarity)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: the lower row first
    return np.take_along_axis(scores, rows, 1), rows


def ids_text(ids) -> list:
    return [[v.decode() if isinstance(v, bytes) else v for v in row] for row in np.asarray(ids).tolist()]


def tiny_embedder():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, name="embed")], name="embedder")


@pytest.mark.parametrize("similarity", ["cosine", "dot", "L2", "squared-L2"])
def test_exact_retrieval_matches_brute_force(similarity):
    layer = Retrieval(k=4, similarity=similarity)
    layer.update_candidates(CANDIDATES, ids=STRING_IDS)
    scores, ids = layer(QUERIES)
    expected_scores, rows = brute_force(QUERIES, CANDIDATES, 4, similarity)
    assert ids.dtype == tf.string and ids.shape == (5, 4) and scores.dtype == tf.float32
    assert ids_text(ids) == STRING_IDS[rows].tolist()
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-5, atol=1e-5)


def test_ties_go_to_the_lower_candidate_row():
    candidates = np.array([[0, 1], [1, 0], [0, 1], [2, 0], [1, 0]], np.float32)  # rows 1, 3, 4: cosine 1
    layer = Retrieval(k=4, candidate_embeddings=candidates, candidate_ids=[10, 11, 12, 13, 14])
    scores, ids = layer(np.array([[3.0, 0.0]], np.float32))
    _, rows = brute_force(np.array([[3.0, 0.0]], np.float32), candidates, 4)
    assert rows.tolist() == [[1, 3, 4, 0]]
    assert ids.numpy().tolist() == [[11, 13, 14, 10]] and ids.dtype == tf.int64
    np.testing.assert_allclose(scores.numpy(), [[1, 1, 1, 0]], atol=1e-6)


def test_ids_default_to_rows_and_return_scores_false_returns_ids_only():
    layer = Retrieval(k=3, return_scores=False)
    layer.update_candidates(CANDIDATES)
    ids = layer(QUERIES)
    assert ids.dtype == tf.int64 and ids.numpy().tolist() == brute_force(QUERIES, CANDIDATES, 3)[1].tolist()
    assert layer.num_candidates == 20 and layer.candidate_ids.tolist() == list(range(20))


def test_keras_rs_keywords_and_an_overridden_score():
    class NegativeL1(Retrieval):
        def compute_score(self, query_embedding, candidate_embedding):
            return -tf.reduce_sum(tf.abs(query_embedding[:, None, :] - candidate_embedding[None, :, :]), axis=-1)

    layer = NegativeL1(k=2)
    layer.update_candidates(candidate_embeddings=CANDIDATES, candidate_ids=STRING_IDS)
    _, ids = layer(QUERIES)
    l1 = -np.abs(QUERIES[:, None, :].astype(np.float64) - CANDIDATES[None].astype(np.float64)).sum(-1)
    assert ids_text(ids) == STRING_IDS[np.argsort(-l1, axis=1, kind="stable")[:, :2]].tolist()


@pytest.mark.parametrize("make,message", [
    (lambda: Retrieval(k=0), "expected an integer >= 1"),
    (lambda: Retrieval(k=2.0), "expected an integer >= 1"),
    (lambda: Retrieval(similarity="euclidean"), "Invalid value for `similarity`"),
    (lambda: Retrieval(return_scores="yes"), "Invalid value for `return_scores`"),
    (lambda: Retrieval(k=5).update_candidates(CANDIDATES[:3]), "3 candidates for k=5; expected at least k"),
    (lambda: Retrieval(k=1).update_candidates(CANDIDATES, ids=STRING_IDS[:4]), "one id per candidate"),
    (lambda: Retrieval(k=1).update_candidates(CANDIDATES, ids=np.linspace(0, 1, 20)),
     r"expected integers \(an int or uint dtype.*or strings.*dtype float64"),
    (lambda: Retrieval(k=1).update_candidates(CANDIDATES[0]), "non-empty float array"),
    (lambda: Retrieval(k=1).update_candidates(np.full((2, 2), np.nan)), "NaN or infinite"),
    (lambda: Retrieval(k=1).update_candidates(CANDIDATES, ids=STRING_IDS, candidate_ids=STRING_IDS), "once"),
    (lambda: Retrieval(k=1)(QUERIES), "has no candidates"),
    (lambda: Retrieval(candidate_ids=[1, 2]), "without `candidate_embeddings`"),
])
def test_bad_arguments_are_refused_with_what_was_expected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_kind_of_ids_stays_that_of_the_first_candidates():
    layer = Retrieval(k=1, candidate_embeddings=CANDIDATES)
    layer.update_candidates(CANDIDATES[:4], ids=[7, 8, 9, 10])  # ints after row numbers: both int64
    with pytest.raises(ValueError, match="this layer's ids are integers"):
        layer.update_candidates(CANDIDATES, ids=STRING_IDS)


def test_a_traced_model_sees_candidates_that_changed_in_number():
    layer = Retrieval(k=2)
    layer.update_candidates(CANDIDATES[:5], ids=STRING_IDS[:5])
    model = keras.Sequential([keras.Input((6,)), layer])
    first = model.predict(QUERIES, verbose=0)[1]
    assert set(ids_text(first)[0]) <= set(STRING_IDS[:5])
    layer.update_candidates(CANDIDATES[::-1][:12], ids=STRING_IDS[::-1][:12])  # 12 now, in another order
    _, ids = model.predict(QUERIES, verbose=0)  # (the same predict function, traced before)
    assert ids_text(ids) == STRING_IDS[::-1][:12][brute_force(QUERIES, CANDIDATES[::-1][:12], 2)[1]].tolist()


@pytest.mark.parametrize("ids", [STRING_IDS, np.arange(100, 120), None], ids=["strings", "ints", "rows"])
def test_keras_file_round_trip_gives_the_same_ids(tmp_path, ids):
    layer = Retrieval(k=3)
    layer.update_candidates(CANDIDATES[:8], ids=None if ids is None else ids[:8])
    search = keras.Sequential([tiny_embedder(), layer])
    search(QUERIES)
    layer.update_candidates(CANDIDATES, ids=ids)  # more candidates than when the model was built
    scores, found = search(QUERIES)
    search.save(tmp_path / "search.keras")
    loaded = keras.models.load_model(tmp_path / "search.keras")
    scores2, found2 = loaded(QUERIES)
    assert ids_text(found2) == ids_text(found) and found2.dtype == found.dtype
    np.testing.assert_array_equal(scores2.numpy(), scores.numpy())
    assert isinstance(loaded.layers[-1], Retrieval) and loaded.layers[-1].num_candidates == 20
    assert loaded.layers[-1].get_config()["k"] == 3


def test_weights_file_loads_candidates_of_another_number(tmp_path):
    source = keras.Sequential([keras.Input((6,)), Retrieval(k=2, candidate_embeddings=CANDIDATES,
                                                              candidate_ids=STRING_IDS)])
    source.save_weights(tmp_path / "search.weights.h5")
    target_layer = Retrieval(k=2, candidate_embeddings=CANDIDATES[:3], candidate_ids=STRING_IDS[:3])
    target = keras.Sequential([keras.Input((6,)), target_layer])
    target.predict(QUERIES, verbose=0)  # traced with 3 candidates
    target.load_weights(tmp_path / "search.weights.h5")
    assert target_layer.candidate_ids.tolist() == STRING_IDS.tolist()
    assert ids_text(target.predict(QUERIES, verbose=0)[1]) == ids_text(source.predict(QUERIES, verbose=0)[1])


def test_ids_above_int64_max_are_refused_not_wrapped():
    ok = Retrieval(k=2, candidate_embeddings=CANDIDATES[:3], candidate_ids=np.array([0, 5, 2**63 - 1], np.uint64))
    assert ok.candidate_ids.tolist() == [0, 5, 2**63 - 1] and ok.candidate_ids.dtype == np.int64
    with pytest.raises(ValueError, match=r"largest value is 2\*\*63 - 1.*e\.g\. 9223372036854775813"):
        Retrieval(k=1).update_candidates(CANDIDATES[:2], ids=np.array([1, 2**63 + 5], np.uint64))
    with pytest.raises(ValueError, match=r"expected integers \(an int or uint dtype.*or strings.*dtype bool"):
        Retrieval(k=1).update_candidates(CANDIDATES[:2], ids=np.array([True, False]))


def test_candidate_embeddings_is_keras_rs_attribute():
    layer = Retrieval(k=2)
    assert layer.candidate_embeddings is None
    layer.update_candidates(CANDIDATES.astype(np.float64), ids=STRING_IDS)
    got = layer.candidate_embeddings
    assert got.dtype == np.float32 and got.shape == (20, 6)
    np.testing.assert_array_equal(got, CANDIDATES)
    scann = ScannRetrieval(k=2, similarity="dot", candidate_embeddings=CANDIDATES)  # (dot: stored as given)
    np.testing.assert_array_equal(scann.candidate_embeddings, CANDIDATES)


@pytest.mark.parametrize("source,target,message", [
    (lambda: Retrieval(k=2, candidate_embeddings=CANDIDATES[:2]), lambda: Retrieval(k=4),
     "holds 2 candidates, fewer than this layer's k=4"),
    (lambda: ScannRetrieval(k=2, candidate_embeddings=CANDIDATES[:3]), lambda: ScannRetrieval(k=5),
     "holds 3 candidates, fewer than this layer's k=5"),
])
def test_loading_a_weights_file_with_too_few_candidates_for_k_says_so(tmp_path, source, target, message):
    keras.Sequential([keras.Input((6,)), source()]).save_weights(tmp_path / "w.weights.h5")
    layer = target()
    model = keras.Sequential([keras.Input((6,)), layer])
    with pytest.raises(ValueError, match=message):
        model.load_weights(tmp_path / "w.weights.h5")
    assert layer.num_candidates == 0  # left as it was


@pytest.mark.parametrize("source,target,message", [
    (lambda: Retrieval(k=2, candidate_embeddings=CANDIDATES[:3], candidate_ids=["a", "b", "c"]),
     lambda: ScannRetrieval(k=2), "is a ScannRetrieval.*saved by a Retrieval layer"),
    (lambda: ScannRetrieval(k=2, candidate_embeddings=CANDIDATES[:3]), lambda: Retrieval(k=2),
     "is a Retrieval.*saved by a ScannRetrieval layer"),
])
def test_the_weights_of_one_kind_of_layer_are_refused_by_the_other(source, target, message):
    # (what Keras does when both sit at the same path, e.g. the same attribute of a subclassed model)
    store = {}
    source().save_own_variables(store)
    layer = target()
    with pytest.raises(ValueError, match=message):
        layer.load_own_variables(store)
    assert layer.num_candidates == 0


@pytest.mark.parametrize("store,message", [
    ({"candidates": CANDIDATES[:5], "ids": np.arange(4)}, "5 candidates but 4 ids"),
    ({"candidates": CANDIDATES[:5], "ids": np.arange(5.0)}, "not a 1-D integer array"),
    ({"candidates": CANDIDATES[:5], "ids": np.array([0, 1, 2, 3, 2**63], np.uint64)}, r"2\*\*63 - 1"),
    ({"candidates": CANDIDATES[:1], "ids": np.arange(1)}, "fewer than this layer's k=2"),
    ({"candidates": CANDIDATES[0], "ids": np.arange(6)}, r"expected a float array \[num_candidates, dim\]"),
    ({"candidates": np.full((3, 2), np.nan), "ids": np.arange(3)}, "NaN or infinite"),
    ({"candidates": CANDIDATES[:2], "ids_utf8": np.frombuffer(b"abcd", np.uint8),
      "ids_offsets": np.array([0, 2, 9])}, "string ids are damaged"),
    ({"candidates": CANDIDATES[:2], "ids_utf8": np.frombuffer(b"abcd", np.uint8),
      "ids_offsets": np.array([0, 3, 1, 4])}, "string ids are damaged"),
    ({"candidates": CANDIDATES[:2], "ids_utf8": np.frombuffer(b"abcd", np.uint8),
      "ids_offsets": np.array([0, 1, 4])}, "integers.*received strings"),
])
def test_load_own_variables_checks_what_update_candidates_checks(store, message):
    layer = Retrieval(k=2, candidate_embeddings=CANDIDATES[:3], candidate_ids=[7, 8, 9])
    with pytest.raises(ValueError, match=message):
        layer.load_own_variables(store)
    assert layer.candidate_ids.tolist() == [7, 8, 9]  # left as it was


def test_a_layer_without_candidates_round_trips_its_config(tmp_path):
    model = keras.Sequential([keras.Input((6,)), Retrieval(k=4, return_scores=False, similarity="dot")])
    model.save(tmp_path / "empty.keras")
    layer = keras.models.load_model(tmp_path / "empty.keras").layers[-1]
    assert (layer.k, layer.return_scores, layer.similarity, layer.num_candidates) == (4, False, "dot", 0)
    layer.update_candidates(CANDIDATES)
    assert layer(QUERIES).numpy().tolist() == brute_force(QUERIES, CANDIDATES, 4, "dot")[1].tolist()


@pytest.mark.slow  # a SavedModel export and load: a few seconds
def test_saved_model_export_carries_the_candidates(tmp_path):
    layer = Retrieval(k=3)
    search = keras.Sequential([tiny_embedder(), layer])
    layer.update_candidates(CANDIDATES[:4], ids=STRING_IDS[:4])
    search(QUERIES)
    layer.update_candidates(CANDIDATES, ids=STRING_IDS)
    expected = ids_text(search(QUERIES)[1])
    search.export(str(tmp_path / "search"), verbose=False)
    del search, layer
    served = tf.saved_model.load(str(tmp_path / "search"))
    scores, ids = served.serve(tf.constant(QUERIES))
    assert ids_text(ids) == expected and scores.shape == (5, 3)
    assert ids_text(served.serve(tf.zeros([0, 6]))[1]) == []


# -- ScaNN ------------------------------------------------------------------------------------------

GALLERY = RNG.normal(size=(400, 8)).astype(np.float32)
GALLERY_QUERIES = RNG.normal(size=(40, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def scann_tree():
    """A ScaNN layer over 400 candidates whose index is a tuned tree (not brute force)."""
    layer = ScannRetrieval(k=5, brute_force_below=0, target_recall=0.9)
    layer.update_candidates(GALLERY, ids=[f"g{i}" for i in range(400)])
    return layer


def test_scann_tree_reaches_its_recall_against_brute_force(scann_tree):
    assert scann_tree.index_params["mode"] == "tree_ah" and scann_tree.index_params["measured_recall"] >= 0.9
    scores, ids = scann_tree(GALLERY_QUERIES)
    exact_scores, rows = brute_force(GALLERY_QUERIES, GALLERY, 5)
    found = [{int(v[1:]) for v in row} for row in ids_text(ids)]
    recall = np.mean([len(f & set(r)) / 5 for f, r in zip(found, rows.tolist())])
    assert recall >= 0.8, recall
    # each score is the cosine of the candidate it names (re-scored exactly), best first
    named = np.array([[int(v[1:]) for v in row] for row in ids_text(ids)])
    truth = np.take_along_axis(naive_scores(GALLERY_QUERIES, GALLERY, "cosine"), named, 1)
    np.testing.assert_allclose(scores.numpy(), truth, atol=1e-4)
    assert (np.diff(scores.numpy(), axis=1) <= 1e-6).all()


def test_scann_queries_whose_searched_leaves_hold_fewer_than_k_get_k_real_candidates(monkeypatch):
    """ScaNN pads with row 0 and a NaN score when the leaves searched hold fewer than k candidates:
    the layer then searches over every leaf (here one leaf of 200, about 2 candidates each, for k=5)."""
    from tfsim.index import float_search

    monkeypatch.setattr(float_search, "build", functools.partial(float_search.build, num_leaves_to_search=1))
    layer = ScannRetrieval(k=5, brute_force_below=0, num_leaves=200)
    layer.update_candidates(GALLERY, ids=[f"g{i}" for i in range(400)])
    assert layer.index_params["num_leaves_to_search"] == 1
    scores, ids = layer(GALLERY_QUERIES)
    assert np.isfinite(scores.numpy()).all()
    named = [[int(v[1:]) for v in row] for row in ids_text(ids)]
    assert all(len(set(row)) == 5 for row in named)  # 5 distinct candidates, none padded
    truth = np.take_along_axis(naive_scores(GALLERY_QUERIES, GALLERY, "cosine"), np.array(named), 1)
    np.testing.assert_allclose(scores.numpy(), truth, atol=1e-4)  # each score is its candidate's


def test_scann_brute_force_is_exact_and_updates_eagerly():
    layer = ScannRetrieval(k=3, similarity="L2")
    layer.update_candidates(CANDIDATES, ids=np.arange(20) * 2)
    assert layer.index_params["mode"] == "brute_force"
    scores, ids = layer(QUERIES)
    expected_scores, rows = brute_force(QUERIES, CANDIDATES, 3, "L2")
    assert ids.numpy().tolist() == (rows * 2).tolist()
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-4)
    layer.update_candidates(CANDIDATES[5:], ids=np.arange(15))  # a new searcher, seen by the next call
    assert layer(QUERIES)[1].numpy().tolist() == brute_force(QUERIES, CANDIDATES[5:], 3, "L2")[1].tolist()


def test_scann_a_function_traced_before_an_update_refuses_to_search_old_candidates():
    layer = ScannRetrieval(k=2, candidate_embeddings=CANDIDATES)
    model = keras.Sequential([keras.Input((6,)), layer])
    model.predict(QUERIES, verbose=0)
    layer.update_candidates(CANDIDATES[::-1].copy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="updated after this function was traced"):
        model.predict(QUERIES, verbose=0)
    model.make_predict_function(force=True)
    _, ids = model.predict(QUERIES, verbose=0)
    assert ids.tolist() == brute_force(QUERIES, CANDIDATES[::-1], 2)[1].tolist()


def test_scann_keras_file_round_trip_keeps_the_tuned_index(tmp_path, scann_tree):
    search = keras.Sequential([keras.Input((8,)), scann_tree])
    expected = ids_text(search(GALLERY_QUERIES)[1])
    search.save(tmp_path / "scann.keras")
    loaded = keras.models.load_model(tmp_path / "scann.keras")
    layer = loaded.layers[-1]
    assert isinstance(layer, ScannRetrieval) and layer.index_params == scann_tree.index_params
    assert ids_text(loaded(GALLERY_QUERIES)[1]) == expected
    assert layer.get_config()["target_recall"] == 0.9 and layer.get_config()["brute_force_below"] == 0


@pytest.mark.slow  # a SavedModel export and load: a few seconds
def test_scann_saved_model_export_gives_the_same_ids(tmp_path, scann_tree):
    search = keras.Sequential([keras.Input((8,)), scann_tree])
    expected = ids_text(search(GALLERY_QUERIES)[1])
    search.export(str(tmp_path / "scann"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "scann"))  # (ScaNN's ops are registered: `import scann` done)
    assert ids_text(served.serve(tf.constant(GALLERY_QUERIES))[1]) == expected
