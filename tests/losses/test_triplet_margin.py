"""Explicit-triplet margin loss ("deep ranking") against a naive reference; golden value; errors."""

import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tfsim.losses import TripletMarginLoss, triplet_margin_loss


@pytest.mark.parametrize("margin", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("t", [1, 7])
@pytest.mark.parametrize("metric", ["squared-L2", "L2"])
def test_matches_reference(margin, t, metric):
    x = np.random.default_rng(t).normal(size=(3 * t, 5)).astype(np.float32)
    got = float(triplet_margin_loss(None, x, margin, metric))
    np.testing.assert_allclose(got, reference.triplet_margin(x, margin, metric == "squared-L2"), rtol=1e-5,
                               atol=1e-6)


def test_golden_value():
    # q=(0,0), p=(3,4), n=(1,0): squared (the paper's D): max(0, 1 + 25 - 1) = 25; plain L2: 1 + 5 - 1 = 5.
    # The second triplet (p at 1, n at 3) is satisfied either way: 0.
    x = np.array([[0, 0], [3, 4], [1, 0], [0, 0], [1, 0], [0, 3]], np.float32)
    assert float(triplet_margin_loss(None, x)) == pytest.approx(12.5)
    assert float(triplet_margin_loss(None, x, distance_metric="L2")) == pytest.approx(2.5)
    assert float(TripletMarginLoss(margin=0.0, distance_metric="L2")(np.zeros(6), x)) == pytest.approx(2.0)


@pytest.mark.parametrize("metric", ["squared-L2", "L2"])
def test_gradient_at_identical_query_and_positive_is_finite(metric):
    x = tf.constant([[1.0, 1.0], [1.0, 1.0], [1.0, 1.2]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = triplet_margin_loss(None, x, distance_metric=metric)
    grad = tape.gradient(loss, x).numpy()
    assert float(loss) == pytest.approx(1.0 - (0.04 if metric == "squared-L2" else 0.2), rel=1e-5)
    assert np.all(np.isfinite(grad))
    # Only the negative term acts: the negative is pushed away from the query (along +y).
    assert grad[2, 1] < 0 and grad[2, 0] == 0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"multiple of 3 \(use sampler.kind=triplets\). Received: embeddings"):
        triplet_margin_loss(None, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="Invalid value for `distance_metric`"):
        TripletMarginLoss(distance_metric="angular")
