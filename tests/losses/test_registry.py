"""Contract tests over every registered loss (`tfsim.losses.LOSSES`).

For each loss: serialization round trip, a `.keras` round trip inside a saved model,
finite values and gradients on ordinary and degenerate batches, every trainable
variable receiving a gradient, and fp16/bf16 inputs computed in float32. Adding a loss to the registry
without adding it to FUNCTIONS below fails `test_every_registered_loss_is_covered`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsim.losses as L
from tfsim.losses import LOSSES, input_kind
from tfsim.models.proxies import CosineProxies

FUNCTIONS = {
    "triplet_semihard": L.triplet_semihard_loss, "triplet_hard": L.triplet_hard_loss,
    "lifted_struct": L.lifted_struct_loss, "multi_similarity": L.multi_similarity_loss,
    "contrastive": L.contrastive_loss, "binomial_deviance": L.binomial_deviance_loss, "nca": L.nca_loss,
    "circle": keras.losses.circle, "normalized_softmax": L.normalized_softmax_loss,
    "proxy_nca": L.proxy_nca_loss, "triplet_margin": L.triplet_margin_loss,
    "batch_all_triplet": L.batch_all_triplet_loss,
}
NAMES = sorted(LOSSES)
B, D_IN, D, C = 12, 5, 4, 4


def test_every_registered_loss_is_covered():
    assert set(FUNCTIONS) == set(LOSSES)
    assert {input_kind(n) for n in LOSSES} == {"embeddings", "proxy_similarities", "triplets"}


def labels_for(name, pattern):
    if input_kind(name) == "triplets":  # rows q, p, n: same, same, other class
        return np.tile([0, 0, 1], B // 3).astype(np.int32)
    return {"pxk": np.repeat(np.arange(C), B // C), "all_same": np.zeros(B),
            "all_distinct": np.arange(B) % (C if input_kind(name) == "proxy_similarities" else B),
            "identical": np.repeat(np.arange(C), B // C)}[pattern].astype(np.int32)


def make_model(name):
    """A tiny model producing what the loss takes: unit embeddings, or proxy similarities."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D_IN,))
    x = keras.layers.Dense(D)(keras.layers.Dense(6, activation="tanh")(inputs))
    x = keras.layers.UnitNormalization()(x)
    if input_kind(name) == "proxy_similarities":
        x = CosineProxies(C)(x)
    return keras.Model(inputs, x)


def features(pattern):
    if pattern == "identical":
        return np.ones((B, D_IN), np.float32)
    return np.random.default_rng(1).normal(size=(B, D_IN)).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_serialization_round_trip(name):
    loss = LOSSES[name]()
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    y, out = labels_for(name, "pxk"), make_model(name)(features("pxk"))
    assert float(clone(y, out)) == pytest.approx(float(loss(y, out)), rel=1e-6)


# Arguments other than the defaults, for every loss: they must reach get_config and change the value.
NON_DEFAULT = {
    "batch_all_triplet": {"margin": 0.7, "triplets": "all"},
    "binomial_deviance": {"alpha": 3.0, "beta": 0.2, "cost": 10.0},
    "circle": {"gamma": 40.0, "margin": 0.3},
    "contrastive": {"pos_margin": 0.1, "neg_margin": 0.8, "distance_metric": "squared-L2"},
    "lifted_struct": {"margin": 0.5},
    "multi_similarity": {"alpha": 3.0, "beta": 40.0, "base": 0.4, "epsilon": 0.2},
    "nca": {"scale": 4.0},
    "normalized_softmax": {"temperature": 0.1},
    "proxy_nca": {"scale": 4.0},
    "triplet_hard": {"margin": 0.3, "soft": True, "distance_metric": "squared-L2"},
    "triplet_margin": {"margin": 0.4, "distance_metric": "L2"},
    "triplet_semihard": {"margin": 0.3, "distance_metric": "angular"},
}


@pytest.mark.parametrize("name", NAMES)
def test_non_default_arguments_round_trip(name):
    assert set(NON_DEFAULT) == set(LOSSES)
    loss = LOSSES[name](**NON_DEFAULT[name])
    config = loss.get_config()
    for key, value in NON_DEFAULT[name].items():
        assert config[key] == value, key
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert clone.get_config() == config
    y, out = labels_for(name, "pxk"), make_model(name)(features("pxk"))
    value = float(loss(y, out))
    assert float(clone(y, out)) == pytest.approx(value, rel=1e-6)
    assert value != pytest.approx(float(LOSSES[name]()(y, out)), rel=1e-4)  # the arguments take effect


@pytest.mark.parametrize("name", NAMES)
def test_keras_file_round_trip(name, tmp_path):
    model = make_model(name)
    model.compile(optimizer="sgd", loss=LOSSES[name]())
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.loss) is LOSSES[name]
    assert loaded.loss.get_config() == model.loss.get_config()
    x, y = features("pxk"), labels_for(name, "pxk")
    assert loaded.evaluate(x, y, batch_size=B, verbose=0) == pytest.approx(
        model.evaluate(x, y, batch_size=B, verbose=0), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pattern", ["pxk", "all_same", "all_distinct", "identical"])
def test_finite_values_and_gradients(name, pattern):
    model, loss = make_model(name), LOSSES[name]()
    with tf.GradientTape() as tape:
        value = loss(labels_for(name, pattern), model(features(pattern)))
    grads = tape.gradient(value, model.trainable_variables)
    assert np.isfinite(float(value)), value
    for var, grad in zip(model.trainable_variables, grads):
        g = np.zeros(var.shape) if grad is None else tf.convert_to_tensor(grad).numpy()
        assert np.all(np.isfinite(g)), var.path
        if pattern == "pxk":  # an ordinary batch trains every variable
            assert np.abs(g).max() > 0, f"{var.path} gets no gradient from {name}"


LOW_PRECISION = (tf.float16, tf.bfloat16)
# Ops that may see fp16/bf16 values without computing with them.
NON_ARITHMETIC = {"Placeholder", "Cast", "Identity", "Shape", "NoOp"}


@pytest.mark.parametrize("name", [n for n in NAMES if n != "circle"])  # Keras's circle computes in its input dtype
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_are_computed_in_float32(name, dtype):
    """fp16/bf16 inputs are cast to float32 before any arithmetic, and the loss cast back at the end.

    A value comparison cannot show this reliably (on ordinary batches fp16 arithmetic stays
    within the rounding of the fp16 result), so the traced graph is read: every op that
    takes or gives a low-precision tensor must be a cast or a pass-through.
    """
    width = C if input_kind(name) == "proxy_similarities" else D
    fn = tf.function(lambda y, x: FUNCTIONS[name](y, x))
    concrete = fn.get_concrete_function(tf.TensorSpec([B], tf.int32), tf.TensorSpec([B, width], dtype))
    assert concrete.structured_outputs.dtype == tf.as_dtype(dtype)  # returned in the caller's dtype
    computing = sorted({op.type for op in concrete.graph.get_operations() if op.type not in NON_ARITHMETIC
                        and any(t.dtype in LOW_PRECISION for t in [*op.inputs, *op.outputs])})
    assert not computing, f"{name} computes in {dtype}: {computing}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_values_match_float64(name, dtype):
    y = labels_for(name, "pxk")
    rounded = tf.cast(make_model(name)(features("pxk")), dtype)
    # (keras.losses.circle returns per-sample values: compare batch means.)
    got = tf.reduce_mean(tf.cast(FUNCTIONS[name](y, rounded), tf.float64))
    want = tf.reduce_mean(FUNCTIONS[name](y, tf.cast(rounded, tf.float64)))
    assert np.isfinite(float(got))
    # Within two roundings of the result to `dtype` (the inputs are the same rounded values).
    np.testing.assert_allclose(float(got), float(want), rtol=2 * 2.0 ** -(11 if dtype == "float16" else 8))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "circle" and "margin" in L.loss_arguments(n)])
def test_losses_check_their_own_argument_values(name):
    with pytest.raises(ValueError, match=r"Invalid value for `margin`: expected a number >= 0. Received: margin=-1"):
        LOSSES[name](margin=-1.0)
    assert LOSSES[name](margin=0.0).margin == 0.0  # 0 is a valid margin
