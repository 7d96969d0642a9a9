"""NCALoss against a naive float64 reference; golden value; gradients."""

import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tests.losses.test_triplet import batch
from tfsim.losses import NCALoss, nca_loss


@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("pattern", ["pxk", "random", "all_same", "all_distinct"])
def test_matches_reference(scale, pattern):
    labels, x = batch(np.random.default_rng(41), pattern, b=16, d=6)
    x = x / 2
    got = float(nca_loss(labels, x, scale))
    np.testing.assert_allclose(got, reference.nca(labels, x, scale), rtol=2e-5, atol=1e-6)


def test_golden_value():
    # Points 0 and 1 at the origin (class 0), point 2 at distance 1 (class 1):
    # anchor 0: p = e^0 / (e^0 + e^-1); anchor 1 the same; anchor 2 has no positive (skipped).
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    want = -np.log(1.0 / (1.0 + np.exp(-1.0)))
    assert float(nca_loss([0, 0, 1], x)) == pytest.approx(want, rel=1e-6)
    assert float(nca_loss([0, 1, 2], x)) == 0.0


def test_gradient_matches_finite_differences():
    labels, x = batch(np.random.default_rng(2), "random", b=6, d=3)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = nca_loss(labels, xt, 2.0)
    grad = tape.gradient(loss, xt).numpy()
    num = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        plus, minus = x.astype(np.float64).copy(), x.astype(np.float64).copy()
        plus[idx] += 1e-6
        minus[idx] -= 1e-6
        num[idx] = (reference.nca(labels, plus, 2.0) - reference.nca(labels, minus, 2.0)) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=1e-3, atol=1e-5)


def test_far_apart_batch_stays_finite():
    # Squared distances of 1e4 underflow every exp(-d) (the naive reference gives 0/0):
    # log-sum-exp keeps it finite. Anchors 1 and 2 have their positive and one negative
    # at the same distance (p = 1/2), anchors 0 and 3 have p ~ 1: loss = 2 log 2 / 4.
    x = np.array([[0.0], [100.0], [200.0], [300.0]], np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = nca_loss([0, 0, 1, 1], xt)
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(np.log(2) / 2, rel=1e-3)
    assert np.all(np.isfinite(tape.gradient(loss, xt).numpy()))
    with pytest.raises(ValueError, match="Invalid value for `scale`"):
        NCALoss(scale=0)
