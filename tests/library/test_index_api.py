"""`tfsim.index.Index`: build -> search against a naive brute force (float and Hamming), the tuned
tree against exact by recall, and build -> save -> load -> identical results for int and string
ids in every mode; saving is atomic and refuses to overwrite unless asked."""

import numpy as np
import pytest

from tfsim.errors import UserInputError
from tfsim.index import Index

RNG = np.random.default_rng(3)
SMALL = RNG.normal(size=(30, 5)).astype(np.float32)
LARGE = RNG.normal(size=(300, 8)).astype(np.float32)
CODES = RNG.normal(size=(40, 16)).astype(np.float32)  # 16-bit codes: their signs


def naive_top(queries, items, k, similarity):
    """(scores [Q, k], rows [Q, k]) one pair at a time in float64; ties: the lower row first."""
    scores = np.zeros((len(queries), len(items)))
    for i, q in enumerate(queries.astype(np.float64)):
        for j, x in enumerate(items.astype(np.float64)):
            if similarity == "cosine":
                scores[i, j] = q @ x / (np.linalg.norm(q) * np.linalg.norm(x))
            elif similarity == "L2":
                scores[i, j] = -np.sqrt(((q - x) ** 2).sum())
            elif similarity == "hamming":
                scores[i, j] = -sum(int(a >= 0) != int(b >= 0) for a, b in zip(q, x))
            else:
                scores[i, j] = q @ x
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


@pytest.mark.parametrize("similarity", ["cosine", "dot", "L2"])
def test_small_index_is_exact(similarity):
    ids = np.array([f"photo_{i}.jpg" for i in range(30)])
    index = Index.build(SMALL, ids=ids, similarity=similarity)
    assert index.params["mode"] == "brute_force" and len(index) == 30 and index.labels is None
    scores, found = index.search(SMALL[:6] + 0.01, k=4)
    expected, rows = naive_top(SMALL[:6] + 0.01, SMALL, 4, similarity)
    assert found.tolist() == ids[rows].tolist()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_hamming_index_ranks_by_the_sign_bits():
    index = Index.build(CODES, ids=np.arange(1000, 1040), similarity="hamming")
    assert index.similarity == "hamming" and index.params["code_bits"] == 16
    queries = RNG.normal(size=(7, 16)).astype(np.float32)
    scores, found = index.search(queries, k=5)
    expected, rows = naive_top(queries, CODES, 5, "hamming")
    assert found.tolist() == (rows + 1000).tolist()  # ties by the lower row, as the naive ranking
    assert scores.tolist() == expected.tolist()


def test_tuned_tree_reaches_its_recall_against_exact():
    index = Index.build(LARGE, brute_force_below=0, target_recall=0.9, num_neighbors=5)
    assert index.params["mode"] == "tree_ah" and index.params["measured_recall"] >= 0.9
    queries = RNG.normal(size=(40, 8)).astype(np.float32)
    _, found = index.search(queries, k=5)
    _, rows = naive_top(queries, LARGE, 5, "cosine")
    recall = np.mean([len(set(f) & set(r)) / 5 for f, r in zip(found.tolist(), rows.tolist())])
    assert recall >= 0.8, recall


@pytest.mark.parametrize("kind", ["brute_force", "tree_ah", "hamming"])
@pytest.mark.parametrize("ids", ["strings", "ints", "rows"])
def test_save_then_load_gives_identical_results(tmp_path, kind, ids):
    items = {"brute_force": SMALL, "tree_ah": LARGE, "hamming": CODES}[kind]
    given = {"strings": np.array([f"id/{i}" for i in range(len(items))]),
             "ints": np.arange(len(items)) * 7 - 50, "rows": None}[ids]
    options = {"brute_force": {}, "tree_ah": {"brute_force_below": 0}, "hamming": {"similarity": "hamming"}}[kind]
    index = Index.build(items, ids=given, **options)
    queries = items[:5] * 0.9 + 0.05
    scores, found = index.search(queries, k=6)
    index.save(tmp_path / "index")
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # (no temporary folder or lock left beside it)
    loaded = Index.load(tmp_path / "index")
    scores2, found2 = loaded.search(queries, k=6)
    assert found2.dtype == found.dtype and found2.tolist() == found.tolist()
    np.testing.assert_array_equal(scores2, scores)
    assert loaded.params == index.params and loaded.similarity == index.similarity and loaded.labels is None
    assert loaded.ids.tolist() == index.ids.tolist()
    if ids == "ints":
        assert found.dtype == np.int64 and found.min() >= -50


def test_save_refuses_an_existing_folder_unless_overwrite(tmp_path):
    Index.build(SMALL, ids=np.arange(30)).save(tmp_path / "index")
    other = Index.build(SMALL[::-1].copy(), ids=np.arange(30))
    with pytest.raises(UserInputError, match="already exists"):
        other.save(tmp_path / "index")
    assert Index.load(tmp_path / "index").search(SMALL[:1], k=1)[1].tolist() == [[0]]
    other.save(tmp_path / "index", overwrite=True)
    assert Index.load(tmp_path / "index").search(SMALL[:1], k=1)[1].tolist() == [[29]]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_load_refuses_an_altered_index(tmp_path):
    Index.build(SMALL).save(tmp_path / "index")
    with open(tmp_path / "index" / "gallery.npz", "r+b") as f:
        f.seek(40)
        f.write(b"\x00\x01\x02")
    with pytest.raises(UserInputError, match="corrupt"):
        Index.load(tmp_path / "index")


def test_search_returns_at_most_the_index_size_and_accepts_one_query():
    index = Index.build(SMALL[:3], ids=["a", "b", "c"])
    scores, found = index.search(SMALL[0], k=10)
    assert found.shape == scores.shape == (1, 3) and found[0, 0] == "a"


def test_unsigned_ids_up_to_int64_max_come_back_as_given():
    ids = np.array([0, 2**40, 2**63 - 1], np.uint64)
    index = Index.build(SMALL[:3], ids=ids)
    _, found = index.search(SMALL[2], k=1)
    assert found.dtype == np.int64 and found.tolist() == [[2**63 - 1]] and index.ids.tolist() == ids.tolist()


@pytest.mark.parametrize("call,message", [
    (lambda: Index.build(SMALL, similarity="euclidean"), "Invalid value for `similarity`"),
    (lambda: Index.build(SMALL, ids=np.arange(4)), "one id per embedding"),
    (lambda: Index.build(SMALL, ids=np.linspace(0, 1, 30)),
     r"expected integers \(an int or uint dtype.*or strings.*dtype float64"),
    (lambda: Index.build(SMALL, ids=np.arange(30) % 2 == 0), r"expected integers .*dtype bool"),
    (lambda: Index.build(SMALL, ids=np.arange(30, dtype=np.uint64) + np.uint64(2**63 - 5)),
     r"largest value is 2\*\*63 - 1.*Received: 25 larger ids .*e\.g\. 9223372036854775808"),
    (lambda: Index.build(SMALL, ids=[""] * 30), "empty string"),
    (lambda: Index.build(SMALL[0]), "non-empty numeric array"),
    (lambda: Index.build(np.full((3, 2), np.inf)), "NaN or infinite"),
    (lambda: Index.build(SMALL, num_neighbors=0), "num_neighbors"),
    (lambda: Index.build(SMALL, target_recall=1.5), "target_recall"),
    (lambda: Index.build(SMALL[:, :4], similarity="hamming"), "multiple of 8"),
    (lambda: Index.build(SMALL).search(SMALL, k=0), "Invalid value for `k`"),
    (lambda: Index.build(SMALL).search(SMALL[:, :3], k=1), r"expected \[num_queries, 5\]"),
    (lambda: Index.build(SMALL).search(np.where(np.eye(4, 5) > 0, np.nan, 0.5), k=1),
     r"4 of the 4 queries hold NaN or infinite values \(rows \[0, 1, 2, 3\]\)"),
    (lambda: Index.build(SMALL).search(np.r_[SMALL[:2], [[0, 0, np.inf, 0, 0]]], k=1), r"1 of the 3.*rows \[2\]"),
])
def test_bad_arguments_are_refused_with_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.slow  # the shared trained run
def test_load_opens_the_pipelines_index_with_its_labels(tiny_run):
    index = Index.load(tiny_run.result.index_dir)
    assert index.labels is not None and len(index.labels) == len(index) == len(index.ids)
    assert index.ids.dtype.kind == "U" and all("/" in i or ":" in i for i in index.ids.tolist()[:5])
    scores, found = index.search(np.ones((1, index.params["dim"]), np.float32), k=3)
    assert found.shape == (1, 3) and (np.diff(scores) <= 1e-6).all()
