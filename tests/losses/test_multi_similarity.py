"""Multi-Similarity loss against a naive float64 reference; mining; gradients."""

import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tests.losses.test_triplet import batch
from tfsim.losses import MultiSimilarityLoss, multi_similarity_loss


@pytest.mark.parametrize("pattern", ["pxk", "random", "all_same", "all_distinct"])
@pytest.mark.parametrize("kw", [{}, {"base": 1.0}, {"alpha": 1.0, "beta": 20.0, "epsilon": 0.3}])
@pytest.mark.parametrize("spread", [0.3, 1.0])
def test_matches_reference(pattern, kw, spread):
    labels, x = batch(np.random.default_rng(5), pattern, b=24, d=8)
    centers = np.random.default_rng(6).normal(size=(24, 8))
    x = (centers[labels] + spread * x).astype(np.float32)  # same-class points closer
    got = float(multi_similarity_loss(labels, x, **kw))
    np.testing.assert_allclose(got, reference.multi_similarity(labels, x, **kw), rtol=2e-5, atol=1e-7)


def test_mining_drops_easy_pairs():
    # Positives far more similar than any negative, negatives far less than any positive:
    # nothing is mined and the loss is 0.
    x = np.array([[1, 0], [0.99, 0.05], [-1, 0.01], [-0.98, -0.04]], np.float32)
    assert float(multi_similarity_loss([0, 0, 1, 1], x)) == 0.0


def test_gradient_matches_finite_differences():
    labels, x = batch(np.random.default_rng(8), "pxk", b=12, d=4)
    x64 = tf.constant(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x64)
        loss = multi_similarity_loss(labels, x64, beta=10.0)
    grad = tape.gradient(loss, x64).numpy()
    eps, num = 1e-6, np.zeros(x.shape)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            xp, xm = x.astype(np.float64).copy(), x.astype(np.float64).copy()
            xp[i, j] += eps
            xm[i, j] -= eps
            num[i, j] = (reference.multi_similarity(labels, xp, beta=10.0)
                         - reference.multi_similarity(labels, xm, beta=10.0)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-4, atol=1e-7)


def test_degenerate_finite_and_config_round_trip():
    for labels, x in [(np.arange(6), np.ones((6, 3))), (np.zeros(6, int), np.ones((6, 3)))]:
        xt = tf.constant(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = multi_similarity_loss(labels, xt)
        assert np.isfinite(loss.numpy()) and np.all(np.isfinite(tape.gradient(loss, xt).numpy()))
    loss = MultiSimilarityLoss(base=1.0, epsilon=0.2)
    clone = MultiSimilarityLoss.from_config(loss.get_config())
    assert (clone.base, clone.epsilon, clone.alpha, clone.beta) == (1.0, 0.2, 2.0, 50.0)
