"""keras.losses.Circle, registered as `circle`: checked against the paper's formula.

tfsim does not reimplement Circle; this pins down what users get by name: the per-anchor
loss of Sun et al. 2020 on cosine similarities, and Keras's reduction, which averages
over the anchors with a non-zero loss (Keras masks the zero ones).
"""

import keras
import numpy as np
import pytest

from tests.losses import reference
from tests.losses.test_triplet import batch
from tfsim.losses import LOSSES, get_loss


@pytest.mark.parametrize("kw", [{}, {"gamma": 16.0, "margin": 0.25}])
@pytest.mark.parametrize("pattern", ["pxk", "random", "all_same", "all_distinct"])
def test_circle_matches_the_paper(kw, pattern):
    labels, x = batch(np.random.default_rng(7), pattern, b=16, d=6)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    want = reference.circle_per_anchor(labels, x, **kw)
    np.testing.assert_allclose(keras.losses.circle(labels, x, **kw).numpy(), want, rtol=1e-4, atol=1e-5)
    loss = get_loss("circle", **kw)
    assert LOSSES["circle"] is keras.losses.Circle
    expected = want[want > 0].mean() if np.any(want > 0) else 0.0
    assert float(loss(labels, x)) == pytest.approx(expected, rel=1e-4, abs=1e-6)
