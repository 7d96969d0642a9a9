"""TripletHardLoss and LiftedStructLoss against naive float64 references; degenerate batches."""

import keras
import numpy as np
import pytest

from tests.losses import reference
from tests.losses.test_triplet import batch
from tfsim.losses import (LiftedStructLoss, TripletHardLoss, get_loss, lifted_struct_loss,
                          triplet_hard_loss)

PATTERNS = ["pxk", "random", "all_same", "all_distinct"]


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_triplet_hard_matches_reference(metric, soft, pattern):
    labels, x = batch(np.random.default_rng(11), pattern)
    got = float(triplet_hard_loss(labels, x, margin=0.7, soft=soft, distance_metric=metric))
    np.testing.assert_allclose(got, reference.triplet_hard(labels, x, 0.7, soft, metric), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("margin", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_lifted_matches_reference(margin, pattern, scale):
    labels, x = batch(np.random.default_rng(12), pattern)
    got = float(lifted_struct_loss(labels, x * scale, margin=margin))
    want = reference.lifted_struct(labels, x * scale, margin)
    np.testing.assert_allclose(got, want, rtol=5e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["triplet_semihard", "triplet_hard", "lifted_struct"])
def test_registry_round_trip_and_finite(name):
    kw = {"margin": 0.4} if name == "lifted_struct" else {"margin": 0.4, "distance_metric": "angular"}
    loss = get_loss(name, **kw)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    labels, x = batch(np.random.default_rng(2), "pxk", b=16, d=4)
    assert float(clone(labels, x)) == pytest.approx(float(loss(labels, x)))


def test_lifted_has_no_distance_metric_and_hard_soft_round_trips():
    assert "distance_metric" not in LiftedStructLoss().get_config()
    with pytest.raises(ValueError, match="Invalid argument 'distance_metric' for loss 'lifted_struct'"):
        get_loss("lifted_struct", distance_metric="angular")  # tfa's lifted loss is plain L2 only
    assert TripletHardLoss.from_config(TripletHardLoss(soft=True).get_config()).soft is True
