"""Binary codes: packing, Hamming distances and top-k against naive bit loops, mAP against a naive
float64 reference with ties."""

import numpy as np
import pytest
import tensorflow as tf

from tfsim.index.hamming import (code_words, hamming_distances, hamming_map, hamming_topk, pack_codes,
                                 tf_code_words, tf_hamming_topk)


def unpack_codes(packed):
    """Naive: each byte's bits, first code in the top bit, as -1 / +1."""
    return np.array([[1.0 if (byte >> (7 - i)) & 1 else -1.0 for byte in row for i in range(8)] for row in packed])


def codes(n, bits, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, bits)).astype(np.float32)


def naive_distance(a_bits, b_bits):
    return sum(1 for x, y in zip(a_bits, b_bits) if (x >= 0) != (y >= 0))


def test_packing_round_trip_and_sign():
    relaxed = codes(20, 32, 0)
    packed = pack_codes(relaxed)
    assert packed.dtype == np.uint8 and packed.shape == (20, 4)
    np.testing.assert_array_equal(unpack_codes(packed), np.where(relaxed >= 0, 1.0, -1.0))
    np.testing.assert_array_equal(pack_codes(unpack_codes(packed)), packed)
    assert pack_codes(np.array([[1, -1, -1, -1, -1, -1, -1, 1.0]]))[0, 0] == 0b10000001  # first code, top bit
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_codes(codes(2, 12, 0))


@pytest.mark.parametrize("bits", [8, 16, 48, 64, 72, 264])  # 264: uint16 distances
def test_distances_and_top_k_match_naive_bit_loops(bits):
    q, g = codes(7, bits, 1), codes(50, bits, 2)
    d = hamming_distances(pack_codes(q), pack_codes(g))
    want = np.array([[naive_distance(a, b) for b in g] for a in q])
    np.testing.assert_array_equal(d, want)
    rows, dist = hamming_topk(pack_codes(q), pack_codes(g), 10, block_size=3)
    for i in range(len(q)):
        naive = sorted(range(len(g)), key=lambda j: (want[i, j], j))[:10]  # ties: lower row first
        assert rows[i].tolist() == naive and dist[i].tolist() == [want[i, j] for j in naive]
    # The TF-op search (the retrieval SavedModel's): query words made in-graph, database words by NumPy.
    tf_words = tf_code_words(tf.constant(pack_codes(q)))
    np.testing.assert_array_equal(tf_words.numpy(), code_words(pack_codes(q)))
    tf_rows, tf_dist = tf_hamming_topk(tf_words, tf.constant(code_words(pack_codes(g))), 10)
    np.testing.assert_array_equal(tf_rows.numpy(), rows)
    np.testing.assert_array_equal(tf_dist.numpy(), dist)
    # No queries: empty answers of width k, from both.
    none = pack_codes(q[:0])
    assert [a.shape for a in hamming_topk(none, pack_codes(g), 10)] == [(0, 10), (0, 10)]
    assert [tuple(a.shape) for a in tf_hamming_topk(tf_code_words(tf.constant(none)),
                                                    tf.constant(code_words(pack_codes(g))), 10)] == [(0, 10)] * 2


def naive_map(q_bits, q_labels, g_bits, g_labels, top=None, radius=2):
    aps, tops, precs = [], [], []
    for a, label in zip(q_bits, q_labels):
        dist = [naive_distance(a, b) for b in g_bits]
        order = sorted(range(len(g_bits)), key=lambda j: (dist[j], j))
        rel = [float(g_labels[j] == label) for j in order]
        if sum(rel) == 0:
            continue
        hits, ap = 0.0, 0.0
        for i, r in enumerate(rel, start=1):
            if r:
                hits += 1
                ap += hits / i
        aps.append(ap / sum(rel))
        if top:
            hits, ap = 0.0, 0.0
            for i, r in enumerate(rel[:top], start=1):
                if r:
                    hits += 1
                    ap += hits / i
            tops.append(ap / hits if hits else 0.0)
        near = [j for j in range(len(g_bits)) if dist[j] <= radius]
        precs.append(sum(g_labels[j] == label for j in near) / len(near) if near else 0.0)
    return np.mean(aps), (np.mean(tops) if top else None), np.mean(precs), len(aps)


def test_map_matches_a_naive_float64_reference_with_ties():
    rng = np.random.default_rng(3)
    # 8-bit codes around 4 class centres: many equal distances, so the tie order matters.
    centres = rng.choice([-1.0, 1.0], (4, 8))
    g_labels, q_labels = rng.integers(0, 4, 60), np.array([0, 1, 2, 3, 0, 1, 5])  # label 5: no relevant item
    flip = lambda labels: centres[labels % 4] * np.where(rng.uniform(size=(len(labels), 8)) < 0.2, -1, 1)  # noqa: E731
    g, q = flip(g_labels), flip(q_labels)
    got = hamming_map(pack_codes(q), q_labels, pack_codes(g), g_labels, top=10, block_size=4)
    want_map, want_top, want_prec, n = naive_map(q, q_labels, g, g_labels, top=10)
    assert got["num_queries"] == n == 6
    assert got["map"] == pytest.approx(want_map, abs=1e-12)
    assert got["map@10"] == pytest.approx(want_top, abs=1e-12)
    assert got["precision@r2"] == pytest.approx(want_prec, abs=1e-12)
    perfect = hamming_map(pack_codes(centres[g_labels]), g_labels, pack_codes(centres[g_labels]), g_labels)
    assert perfect["map"] == pytest.approx(1.0)  # (distinct centres: each class ranks first, at distance 0)


def test_leave_one_out_map_excludes_each_query_itself():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 30)
    relaxed = rng.uniform(-1, 1, (30, 16))
    got = hamming_map(pack_codes(relaxed), labels, pack_codes(relaxed), labels, top=5, exclude_self=True,
                      block_size=7)
    aps, tops, precs = [], [], []
    for i in range(30):  # each query against the other 29 rows, through the naive reference
        rest = [j for j in range(30) if j != i]
        m, t, p, n = naive_map(relaxed[[i]], labels[[i]], relaxed[rest], labels[rest], top=5)
        if n:
            aps.append(m)
            tops.append(t)
            precs.append(p)
    assert got["num_queries"] == len(aps)
    assert got["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert got["map@5"] == pytest.approx(np.mean(tops), abs=1e-12)
    assert got["precision@r2"] == pytest.approx(np.mean(precs), abs=1e-12)


# The index's searcher: faiss, exact under `hamming_exact_below` codes, an inverted file above.

def clustered_codes(n, bits, centres, flip, seed):
    """Relaxed codes near `centres` random binary centres, each bit flipped with probability `flip`
    (codes with neighbourhoods, as a hashing model's are; random codes have none)."""
    rng = np.random.default_rng(seed)
    centre_bits = np.random.default_rng(1234).integers(0, 2, (centres, bits))
    bits_ = centre_bits[rng.integers(0, centres, n)] ^ (rng.random((n, bits)) < flip)
    return (bits_ * 2 - 1).astype(np.float32)


def test_exact_searcher_returns_what_the_reference_and_a_naive_loop_return_ties_included():
    from tfsim.index.hamming import HammingSearcher, build_hamming
    gallery = codes(3000, 16, 3)  # 16 bits over 3,000 codes: many ties at every distance
    gallery[100:110] = gallery[7]  # and duplicates
    searcher, params = build_hamming(gallery)
    assert params["engine"] == "exact" and isinstance(searcher, HammingSearcher)
    queries = np.concatenate([gallery[[7, 105]], codes(40, 16, 4)])
    rows, dist = searcher.search_codes(pack_codes(queries), 25)
    want_rows, want_dist = hamming_topk(pack_codes(queries), pack_codes(gallery), 25)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(dist, want_dist)
    for i in (0, 1, 2):  # the naive loop: (distance, row) order
        d = [naive_distance(queries[i], b) for b in gallery]
        naive = sorted(range(len(gallery)), key=lambda j: (d[j], j))[:25]
        assert rows[i].tolist() == naive
    assert rows[0, :11].tolist() == [7] + list(range(100, 110))  # the duplicates, by row
    found, scores = searcher.search_batched(queries, final_num_neighbors=25)
    np.testing.assert_array_equal(found, rows)
    np.testing.assert_array_equal(scores, -dist)


def tie_aware_recall(found_dist, exact_dist):
    """Share of each query's k results at most as far as its exact k-th neighbour."""
    k = exact_dist.shape[1]
    return float(np.minimum((found_dist <= exact_dist[:, -1:]).sum(axis=1), k).mean() / k)


def test_inverted_file_tunes_itself_to_the_target_recall_and_holds_it_on_new_queries():
    from tfsim.index.hamming import build_hamming
    gallery = clustered_codes(20_000, 64, 300, 0.12, 0)
    searcher, params = build_hamming(gallery, num_neighbors=10, target_recall=0.9, exact_below=10_000)
    assert params["engine"] == "ivf" and params["num_lists"] == 141  # sqrt(20,000)
    assert params["measured_recall"] >= 0.9 and params["tuning"]["sample"] == 1000
    assert 1 <= params["num_lists_to_search"] < params["num_lists"] // 4  # it searches a few lists, not all
    tried = {t["num_lists_to_search"]: t["recall"] for t in params["tuning"]["tried"]}
    assert tried[params["num_lists_to_search"]] >= 0.9
    assert all(r < 0.9 for n, r in tried.items() if n < params["num_lists_to_search"])  # the fewest that reach it

    queries = pack_codes(clustered_codes(500, 64, 300, 0.12, 1))  # not in the gallery
    _, exact_dist = hamming_topk(queries, pack_codes(gallery), 10)
    _, dist = searcher.search_codes(queries, 10)
    assert tie_aware_recall(dist, exact_dist) >= 0.87  # the sample's recall holds on other queries
    one_list = tie_aware_recall(searcher.search_codes(queries, 10, lists_to_search=1)[1], exact_dist)
    assert one_list < 0.9  # (a target that searching one list would meet proves nothing)
    # Every list searched: exact distances (among codes tied at the k-th distance, the first lists' codes).
    rows, dist = searcher.search_codes(queries, 10, lists_to_search=params["num_lists"])
    np.testing.assert_array_equal(dist, exact_dist)
    np.testing.assert_array_equal(np.take_along_axis(hamming_distances(queries, pack_codes(gallery)), rows, 1), dist)


def test_inverted_file_queries_whose_lists_hold_fewer_than_k_codes_get_k_exact_neighbours():
    from tfsim.index.hamming import build_hamming
    gallery = clustered_codes(60, 32, 20, 0.05, 2)
    searcher, params = build_hamming(gallery, num_neighbors=5, exact_below=10, num_lists=30)
    queries = pack_codes(gallery[:20])
    rows, dist = searcher.search_codes(queries, 12, lists_to_search=1)  # one list holds about 2 codes
    assert (rows >= 0).all()
    want_rows, want_dist = hamming_topk(queries, pack_codes(gallery), 12)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(dist, want_dist)


def test_inverted_file_index_is_saved_loaded_and_grown(tmp_path):
    import json

    from tfsim.errors import UserInputError
    from tfsim.index import Index, storage
    gallery = clustered_codes(3000, 64, 60, 0.1, 3)
    index = Index.build(gallery, similarity="hamming", hamming_exact_below=1000, target_recall=0.9)
    assert index.params["engine"] == "ivf" and index.params["num_lists"] == 55
    queries = clustered_codes(50, 64, 60, 0.1, 4)
    scores, ids = index.search(queries, k=10)
    loaded = Index.load(index.save(tmp_path / "idx"))
    assert sorted(p.name for p in (tmp_path / "idx" / "scann").iterdir()) == ["centroids.npy", "codes.npy",
                                                                              "lists.npy"]
    again_scores, again_ids = loaded.search(queries, k=10)
    np.testing.assert_array_equal(again_ids, ids)
    np.testing.assert_array_equal(again_scores, scores)
    # A searcher grown by new codes (each put in its nearest list) finds them.
    searcher = loaded._gallery.searcher
    searcher.upsert(None, queries[:5])
    rows, dist = searcher.search_codes(pack_codes(queries[:5]), 1)
    assert rows[:, 0].tolist() == list(range(3000, 3005)) and not dist.any()
    assert len(searcher.lists) == 3005

    # A folder whose list numbers point past its lists (checksums re-computed, as someone who knows
    # the format would): one clear error, not a crash inside faiss.
    lists = np.load(tmp_path / "idx" / "scann" / "lists.npy")
    lists[0] = 10_000
    np.save(tmp_path / "idx" / "scann" / "lists.npy", lists)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    meta["files"] = storage._file_digests(tmp_path / "idx")
    meta["digest"] = storage.meta_digest(meta)
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match=r"cannot be read \(Expected one list number in \[0, 55\)"):
        Index.load(tmp_path / "idx")

    def sealed(name, array):
        np.save(tmp_path / "idx" / "scann" / name, array)
        meta = json.loads((tmp_path / "idx" / "index.json").read_text())
        meta["files"] = storage._file_digests(tmp_path / "idx")
        meta["digest"] = storage.meta_digest(meta)
        (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))

    # Millions of lists for 3,000 codes (faiss allocates per list: a 4 MB file would take 600 MB):
    # refused before faiss sees them.
    sealed("lists.npy", lists % 55)
    sealed("centroids.npy", np.zeros((4_000_000, 8), np.uint8))
    with pytest.raises(UserInputError, match=r"Expected 55 list centroids, at most one per code \(3000\); got 4000000"):
        Index.load(tmp_path / "idx")
    # Codes narrower than index.json's code_bits: refused when loaded, not at the first search.
    sealed("codes.npy", np.zeros((3000, 4), np.uint8))
    with pytest.raises(UserInputError, match=r"Expected codes \[N, 64 / 8\]; got shape \(3000, 4\)"):
        Index.load(tmp_path / "idx")
    # Query codes that are not packed bytes are refused, not wrapped to bytes.
    with pytest.raises(ValueError, match="Expected packed query codes uint8"):
        searcher.search_codes(pack_codes(queries[:2]).astype(np.int64), 3)
