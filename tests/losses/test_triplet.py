"""TripletSemiHardLoss against the naive float64 reference, gradients, degenerate batches."""

import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tfsim.losses import TripletSemiHardLoss, triplet_semihard_loss

METRICS = ["L2", "squared-L2", "angular"]


def batch(rng, pattern, b=24, d=8):
    x = rng.normal(size=(b, d)).astype(np.float32)
    if pattern == "pxk":
        labels = np.repeat(np.arange(b // 4), 4)
    elif pattern == "random":
        labels = rng.integers(0, b // 3, size=b)
    elif pattern == "all_same":
        labels = np.zeros(b, int)
    else:  # all_distinct
        labels = np.arange(b)
    return labels.astype(np.int32), x


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.1, 1.0, 2.5])
@pytest.mark.parametrize("pattern", ["pxk", "random", "all_same", "all_distinct"])
def test_matches_naive_reference(metric, margin, pattern):
    # (a seed of its own per case, the same in every process: `hash` of a str changes with PYTHONHASHSEED)
    rng = np.random.default_rng(zlib.crc32(f"{metric}/{margin}/{pattern}".encode()))
    labels, x = batch(rng, pattern)
    got = float(triplet_semihard_loss(labels, x, margin=margin, distance_metric=metric))
    want = reference.triplet_semihard(labels, x, margin, metric)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_semihard_choice_is_strictly_farther_and_unbounded():
    # One anchor, one positive at distance 1; negatives at 1 (not farther), 1.5 and 9
    # (both beyond margin 0.2). tfa picks 1.5: strictly greater, no upper bound.
    x = np.array([[0.0], [1.0], [-1.0], [1.5], [9.0]], np.float32)
    labels = np.array([0, 0, 1, 2, 3])
    # pairs (0,1): d+=1, semi-hard neg d=1.5 -> 0; (1,0): d+=1, negs of 1: 2,0.5,8 -> 2 -> 0
    got = float(triplet_semihard_loss(labels, x, margin=0.2, distance_metric="L2"))
    assert got == pytest.approx(0.0, abs=1e-7)
    got = float(triplet_semihard_loss(labels, x, margin=0.6, distance_metric="L2"))
    # (0,1): 1 - 1.5 + 0.6 = 0.1; (1,0): negatives of 1 at 2, 0.5, 8 -> smallest > 1 is 2 -> 0
    assert got == pytest.approx(0.05, abs=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_gradient_matches_finite_differences(metric):
    rng = np.random.default_rng(7)
    labels, x = batch(rng, "pxk", b=12, d=4)
    x64 = tf.constant(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x64)
        loss = triplet_semihard_loss(labels, x64, margin=1.0, distance_metric=metric)
    grad = tape.gradient(loss, x64).numpy()
    eps = 1e-6
    num = np.zeros_like(x, np.float64)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            xp, xm = x.astype(np.float64), x.astype(np.float64)
            xp[i, j] += eps
            xm[i, j] -= eps
            num[i, j] = (reference.triplet_semihard(labels, xp, 1.0, metric)
                         - reference.triplet_semihard(labels, xm, 1.0, metric)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-4, atol=1e-6)


def loss_fns():
    """Every batch loss function with each distance it takes (shared by the loss tests)."""
    from tfsim.losses import lifted_struct_loss, triplet_hard_loss
    fns = [(f"semihard-{m}", lambda y, x, m=m: triplet_semihard_loss(y, x, distance_metric=m)) for m in METRICS]
    fns += [(f"hard-{m}", lambda y, x, m=m: triplet_hard_loss(y, x, distance_metric=m)) for m in METRICS]
    return fns + [("lifted", lifted_struct_loss)]


@pytest.mark.parametrize("name,fn", loss_fns())
@pytest.mark.parametrize("pattern", ["all_distinct", "all_same", "identical"])
def test_degenerate_batches_are_finite(name, fn, pattern):
    if pattern == "identical":
        labels, x = np.array([0, 0, 1, 1]), np.ones((4, 3), np.float32)
    else:
        labels, x = batch(np.random.default_rng(1), pattern, b=8, d=3)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = fn(labels, x)
    grad = tape.gradient(loss, x)
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(grad.numpy()))
    if pattern == "all_distinct" and not name.startswith("hard"):
        assert loss.numpy() == 0.0  # tfa gives NaN here


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_computed_in_float32(dtype):
    # Points near (8, ..., 8), exactly representable in `dtype`: squared norms ~512, where fp16's
    # spacing is 0.5 and bf16's 4, against squared distances ~1. Distances through the Gram matrix
    # computed in `dtype` are off by tens of percent; in float32 the loss is within the rounding
    # of the result to `dtype`.
    labels, x = batch(np.random.default_rng(3), "pxk", b=16, d=8)
    step = 2.0 ** -(7 if dtype == "float16" else 4)  # the spacing of `dtype` between 8 and 16
    x = 8.0 + np.round(0.25 * x / step) * step
    assert np.array_equal(tf.cast(tf.cast(x, dtype), tf.float64).numpy(), x)
    got = triplet_semihard_loss(labels, tf.cast(x, dtype))
    assert got.dtype == tf.as_dtype(dtype)
    want = reference.triplet_semihard(labels, x)
    np.testing.assert_allclose(float(got), want, rtol=2 * 2.0 ** -(11 if dtype == "float16" else 8))


def test_keras_class_round_trip_and_value():
    loss = TripletSemiHardLoss(margin=0.3, distance_metric="angular")
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, TripletSemiHardLoss)
    assert (clone.margin, clone.distance_metric) == (0.3, "angular")
    labels, x = batch(np.random.default_rng(4), "random", b=16, d=5)
    np.testing.assert_allclose(float(clone(labels, x)),
                               reference.triplet_semihard(labels, x, 0.3, "angular"), rtol=2e-5)


def test_callable_distance_metric():
    labels, x = batch(np.random.default_rng(5), "pxk", b=12, d=6)
    fn = lambda e: tf.sqrt(tf.reduce_sum(tf.square(e[:, None] - e[None]), -1) + 1e-12)  # noqa: E731
    got = float(TripletSemiHardLoss(distance_metric=fn)(labels, x))
    want = reference.triplet_semihard(labels, x, 1.0, fn(tf.constant(x, tf.float64)).numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_invalid_metric_message():
    with pytest.raises(ValueError, match="distance_metric.*Received: distance_metric='cosine'"):
        TripletSemiHardLoss(distance_metric="cosine")
