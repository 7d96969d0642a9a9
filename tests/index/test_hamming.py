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
