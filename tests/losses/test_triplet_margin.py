"""Explicit-triplet margin loss ("deep ranking") against a naive reference; golden value; errors."""

import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tfsim.losses import TripletMarginLoss, triplet_margin_loss


@pytest.mark.parametrize("margin", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("t", [1, 7])
def test_matches_reference(margin, t):
    x = np.random.default_rng(t).normal(size=(3 * t, 5)).astype(np.float32)
    got = float(triplet_margin_loss(None, x, margin))
    np.testing.assert_allclose(got, reference.triplet_margin(x, margin), rtol=1e-5, atol=1e-6)


def test_golden_value():
    # q=(0,0), p=(3,4) at 5, n=(1,0) at 1: max(0, 1 + 5 - 1) = 5; second triplet satisfied: 0.
    x = np.array([[0, 0], [3, 4], [1, 0], [0, 0], [1, 0], [0, 3]], np.float32)
    assert float(triplet_margin_loss(None, x)) == pytest.approx(2.5)
    assert float(TripletMarginLoss(margin=0.0)(np.zeros(6), x)) == pytest.approx(2.0)


def test_gradient_at_identical_query_and_positive_is_finite():
    x = tf.constant([[1.0, 1.0], [1.0, 1.0], [1.0, 1.2]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = triplet_margin_loss(None, x)
    grad = tape.gradient(loss, x).numpy()
    assert float(loss) == pytest.approx(0.8, rel=1e-5)
    assert np.all(np.isfinite(grad))
    # Only the negative term acts: the query is pushed away from the negative (along -y).
    np.testing.assert_allclose(grad[2], [0.0, -1.0], atol=1e-6)


def test_rows_not_in_triplets_are_an_error():
    with pytest.raises(ValueError, match="multiple of 3.*sampler.kind=triplets"):
        triplet_margin_loss(None, np.zeros((4, 2), np.float32))
