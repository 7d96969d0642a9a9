"""Binomial deviance against a naive float64 reference; golden value; gradients."""

import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tests.losses.test_triplet import batch
from tfsim.losses import BinomialDevianceLoss, binomial_deviance_loss


@pytest.mark.parametrize("kw", [{}, {"alpha": 1.0, "beta": 0.2, "cost": 5.0}])
@pytest.mark.parametrize("pattern", ["pxk", "random", "all_same", "all_distinct"])
def test_matches_reference(kw, pattern):
    labels, x = batch(np.random.default_rng(31), pattern, b=16, d=6)
    got = float(binomial_deviance_loss(labels, x, **kw))
    np.testing.assert_allclose(got, reference.binomial_deviance(labels, x, **kw), rtol=2e-5, atol=1e-6)


def test_golden_value():
    # Two orthogonal classes, identical within class: positives s=1, negatives s=0.
    # pos: log(1 + e^{-2*0.5}) = 0.31326; neg: log(1 + e^{2*25*(-0.5)}) = e^{-25} ~ 1.4e-11.
    x = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    assert float(binomial_deviance_loss([0, 0, 1, 1], x)) == pytest.approx(np.log1p(np.exp(-1.0)), rel=1e-5)


def test_gradient_finite_and_round_trip():
    labels, x = batch(np.random.default_rng(3), "pxk", b=8, d=4)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = binomial_deviance_loss(labels, xt)
    assert np.all(np.isfinite(tape.gradient(loss, xt).numpy()))
    clone = BinomialDevianceLoss.from_config(BinomialDevianceLoss(cost=10.0).get_config())
    assert (clone.alpha, clone.beta, clone.cost) == (2.0, 0.5, 10.0)
