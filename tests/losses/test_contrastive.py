"""Contrastive loss against a naive float64 reference; golden value; degenerate batches."""

import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tests.losses.test_triplet import batch
from tfsim.losses import ContrastiveLoss, contrastive_loss


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("margins", [(0.0, 1.0), (0.2, 0.8), (0.5, 3.0)])
@pytest.mark.parametrize("pattern", ["pxk", "random", "all_same", "all_distinct"])
def test_matches_reference(metric, margins, pattern):
    labels, x = batch(np.random.default_rng(21), pattern, b=16, d=6)
    got = float(contrastive_loss(labels, x * 0.4, *margins, distance_metric=metric))
    want = reference.contrastive(labels, x * 0.4, *margins, metric)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_golden_value():
    # Points on a line: class 0 at 0 and 1, class 1 at 3. Positive pairs (0,1),(1,0): d=1.
    # Negative pairs: d = 3, 2 (twice each). pos_margin 0.5, neg_margin 2.5:
    # pull = 0.5 * 0.5^2 = 0.125; push = mean(0.5*0^2, 0.5*0.5^2) = 0.0625 -> 0.1875.
    x = np.array([[0.0], [1.0], [3.0]], np.float32)
    assert float(contrastive_loss([0, 0, 1], x, 0.5, 2.5)) == pytest.approx(0.1875, abs=1e-6)


def test_degenerate_finite_and_round_trip():
    x = tf.ones((4, 3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = contrastive_loss([0, 0, 1, 1], x)
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(tape.gradient(loss, x).numpy()))
    clone = ContrastiveLoss.from_config(ContrastiveLoss(pos_margin=0.1, neg_margin=0.7).get_config())
    assert (clone.pos_margin, clone.neg_margin, clone.distance_metric) == (0.1, 0.7, "L2")
