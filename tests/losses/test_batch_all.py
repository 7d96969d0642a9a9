"""BatchAllTripletLoss: golden values and gradients from pytorch-metric-learning 2.9 itself, an
independent naive float64 loop, finite differences, and the semantics that tell it from tfa's.

The goldens (tests/losses/golden/pml_2_9_golden.*) were made by make_pml_golden.py in a
separate torch + PML virtualenv: `TripletMarginLoss(margin)` on the triplets of
`TripletMarginMiner(margin, type_of_triplets=kind)`, default LpDistance.
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsim.losses import BatchAllTripletLoss, batch_all_triplet_loss, triplet_semihard_loss

GOLDEN = Path(__file__).parent / "golden"
CASES = json.loads((GOLDEN / "pml_2_9_golden.json").read_text())["cases"]
ARRAYS = dict(np.load(GOLDEN / "pml_2_9_golden.npz"))


def naive(labels, emb, margin, kind):
    """Loop over every (a, p, n): PML's miner condition, hinge, mean over the non-zero costs."""
    emb = np.asarray(emb, np.float64)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    total, count = 0.0, 0
    for a, p, n in itertools.product(range(len(labels)), repeat=3):
        if a == p or labels[a] != labels[p] or labels[n] == labels[a]:
            continue
        ap, an = np.linalg.norm(unit[a] - unit[p]), np.linalg.norm(unit[a] - unit[n])
        t = an - ap
        kept = {"semihard": 0 < t <= margin, "hard": t <= 0, "all": t <= margin, "easy": t > margin}[kind]
        cost = max(ap - an + margin, 0.0) if kept else 0.0
        if cost > 0:
            total, count = total + cost, count + 1
    return total / count if count else 0.0


def test_golden_cover_every_kind_and_degenerate_batches():
    assert {c["triplets"] for c in CASES} == {"semihard", "hard", "all", "easy"}
    assert {c["labels_pattern"] for c in CASES} == {"pk", "random", "all_same", "all_distinct"}
    # the cases really mine something where they can
    assert all(c["num_mined"] > 0 for c in CASES if c["labels_pattern"] in ("pk", "random"))
    # every pk/random case of semihard, hard and all has a positive loss (easy triplets cost 0)
    positive = {c["id"] for c in CASES if float(ARRAYS[f"case{c['id']}_loss"]) > 0}
    assert positive == {c["id"] for c in CASES if c["labels_pattern"] in ("pk", "random") and c["triplets"] != "easy"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['id']}-{c['labels_pattern']}-{c['triplets']}-{c['margin']}")
def test_matches_pml(case):
    x = tf.constant(ARRAYS[f"case{case['id']}_embeddings"])  # float64
    labels = ARRAYS[f"case{case['id']}_labels"]
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = BatchAllTripletLoss(margin=case["margin"], triplets=case["triplets"])(labels, x)
    grad = tape.gradient(value, x).numpy()
    # float64; both use the Gram-matrix distance
    np.testing.assert_allclose(float(value), float(ARRAYS[f"case{case['id']}_loss"]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad, ARRAYS[f"case{case['id']}_grad"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["semihard", "hard", "all", "easy"])
@pytest.mark.parametrize("seed", range(3))
def test_matches_naive_loop(kind, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 16)
    emb = rng.normal(size=(16, 4))
    margin = [0.1, 0.3, 1.0][seed]
    got = float(batch_all_triplet_loss(labels, tf.constant(emb, tf.float32), margin, kind))
    np.testing.assert_allclose(got, naive(labels, emb, margin, kind), rtol=1e-5, atol=1e-7)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(3), 4)
    emb = rng.normal(size=(12, 3))
    x = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = batch_all_triplet_loss(labels, x, 0.5, "all")
    grad = tape.gradient(value, x).numpy()
    assert float(value) > 0
    eps, fd = 1e-6, np.zeros_like(emb)
    for i, j in itertools.product(range(12), range(3)):
        up, down = emb.copy(), emb.copy()
        up[i, j] += eps
        down[i, j] -= eps
        fd[i, j] = (naive(labels, up, 0.5, "all") - naive(labels, down, 0.5, "all")) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-7)


def test_differs_from_tfa_semihard_where_the_semantics_differ():
    # Anchor 0 with one positive (d=0.2 after normalisation... built on the unit circle) and
    # two negatives farther than it, one inside the margin and one beyond it.
    angles = np.array([0.0, 0.2, 0.3, 0.45, 3.0, 3.1])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 1, 2, 2])
    margin = 0.2
    got = float(batch_all_triplet_loss(labels, emb, margin, "semihard"))
    np.testing.assert_allclose(got, naive(labels, emb, margin, "semihard"), rtol=1e-12)
    tfa = float(triplet_semihard_loss(labels, emb, margin))
    assert abs(got - tfa) > 1e-3  # tfa: one negative per pair, mean over all pairs incl. zeros


def test_no_violating_triplet_gives_zero_and_zero_gradient():
    emb = tf.constant([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]])
    with tf.GradientTape() as tape:
        tape.watch(emb)
        value = batch_all_triplet_loss([0, 0, 1, 1], emb)
    assert float(value) == 0.0
    assert np.all(tape.gradient(value, emb).numpy() == 0)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="`triplets`.*semihard.*Received: triplets='semi'"):
        BatchAllTripletLoss(triplets="semi")
    with pytest.raises(ValueError, match="`margin`.*>= 0"):
        BatchAllTripletLoss(margin=-0.1)
