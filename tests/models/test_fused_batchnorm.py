"""tfsim's BatchNormalization: Keras's, with TensorFlow's fused kernel in training.

Checked against a naive float64 batch normalisation (outputs, moving statistics), against Keras's
own layer with the same weights (gradients, inference, mixed precision), and for which cases are
fused (one FusedBatchNormV3 op in the traced graph) and which are left to Keras.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsim.models.backbones import BatchNormalization as FusedBatchNormalization
from tfsim.models.backbones import small_resnet


def naive_batchnorm(x, gamma, beta, moving_mean, moving_var, momentum, eps):
    """float64 loops over channels: y, and the moving statistics after one training step."""
    x = x.astype(np.float64)
    y = np.empty_like(x)
    new_mean, new_var = np.empty(x.shape[-1]), np.empty(x.shape[-1])
    for c in range(x.shape[-1]):
        values = x[..., c].ravel()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)  # biased, as Keras averages it
        y[..., c] = gamma[c] * (x[..., c] - mean) / np.sqrt(var + eps) + beta[c]
        new_mean[c] = moving_mean[c] * momentum + mean * (1 - momentum)
        new_var[c] = moving_var[c] * momentum + var * (1 - momentum)
    return y, new_mean, new_var


def same_layers(shape, seed=0, **kwargs):
    """A fused layer and Keras's, built with the same random weights and moving statistics."""
    rng = np.random.default_rng(seed)
    fused, plain = FusedBatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    fused.build(shape)
    plain.build(shape)
    weights = [rng.uniform(0.5, 1.5, w.shape) if ("variance" in w.path or "gamma" in w.path)
               else rng.normal(size=w.shape) for w in plain.weights]
    weights = [w.astype(np.float32) for w in weights]
    fused.set_weights(weights)
    plain.set_weights(weights)
    return fused, plain, weights, rng


def training_step(layer, x, upstream):
    """y, the moving statistics after the step, and the gradients of sum(y * upstream) with respect
    to x, gamma and beta."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return (y.numpy(), layer.moving_mean.numpy(), layer.moving_variance.numpy(), *[g.numpy() for g in grads])


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (2, 3, 3, 8), (1, 1, 1, 2)])
def test_training_step_matches_a_naive_float64_batchnorm_and_keras_gradients(shape):
    fused, plain, (gamma, beta, moving_mean, moving_var), rng = same_layers(shape, momentum=0.9, epsilon=1e-3)
    x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
    upstream = rng.normal(size=shape).astype(np.float32)
    y_ref, mean_ref, var_ref = naive_batchnorm(x, gamma, beta, moving_mean, moving_var, 0.9, 1e-3)
    ours, keras_ = training_step(fused, x, upstream), training_step(plain, x, upstream)
    for name, (y, mean, var, *_) in (("fused", ours), ("keras", keras_)):
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(var, var_ref, rtol=1e-5, atol=1e-6, err_msg=name)
    for what, a, b in zip(("d/dx", "d/dgamma", "d/dbeta"), ours[3:], keras_[3:]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=what)
    # Inference: the moving statistics, exactly as Keras.
    np.testing.assert_allclose(fused(x, training=False).numpy(), plain(x, training=False).numpy(), rtol=1e-6,
                               atol=1e-6)


def test_mixed_precision_computes_in_float32_as_keras():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        fused, plain, _, rng = same_layers((4, 3, 3, 4), momentum=0.5)
        x = rng.normal(size=(4, 3, 3, 4)).astype(np.float32)
        upstream = rng.normal(size=(4, 3, 3, 4)).astype(np.float32)
        ours, keras_ = training_step(fused, x, upstream), training_step(plain, x, upstream)
    finally:
        keras.config.set_dtype_policy(policy)
    assert ours[0].dtype == keras_[0].dtype  # (bfloat16 out, float32 statistics)
    np.testing.assert_allclose(ours[0].astype(np.float32), keras_[0].astype(np.float32), atol=0.05)
    np.testing.assert_allclose(ours[1], keras_[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[2], keras_[2], rtol=1e-5, atol=1e-6)


def fused_ops(layer, shape, **call):
    fn = tf.function(lambda x: layer(x, **call))
    return [op.type for op in fn.get_concrete_function(tf.TensorSpec(shape)).graph.get_operations()].count(
        "FusedBatchNormV3")


def test_only_channels_last_training_on_a_4d_map_is_fused_the_rest_is_keras():
    assert fused_ops(FusedBatchNormalization(), (None, 4, 4, 3), training=True) == 1
    assert fused_ops(FusedBatchNormalization(), (None, 4, 4, 3), training=False) == 0
    assert fused_ops(FusedBatchNormalization(), (None, 3), training=True) == 0  # rank 2
    assert fused_ops(FusedBatchNormalization(axis=1), (None, 3, 4, 4), training=True) == 0  # channels first
    assert fused_ops(FusedBatchNormalization(epsilon=1e-6), (None, 4, 4, 3), training=True) == 0
    assert fused_ops(FusedBatchNormalization(synchronized=True), (None, 4, 4, 3), training=True) == 0
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")  # (Keras computes in float64: left to it)
    try:
        assert fused_ops(FusedBatchNormalization(), (None, 4, 4, 3), training=True) == 0
        fused, plain, _, rng = same_layers((2, 4, 4, 3))
        x = (rng.normal(size=(2, 4, 4, 3)) * 1e4).astype(np.float64)
        np.testing.assert_allclose(fused(x, training=True).numpy(), plain(x, training=True).numpy(), rtol=1e-12)
    finally:
        keras.config.set_dtype_policy(policy)
    frozen = FusedBatchNormalization()
    frozen.trainable = False
    assert fused_ops(frozen, (None, 4, 4, 3), training=True) == 0
    # Channels first, left to Keras, still normalises over axis 1 as Keras does.
    fused, plain, _, rng = same_layers((2, 3, 4, 4), axis=1)
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(fused(x, training=True).numpy(), plain(x, training=True).numpy(), atol=1e-6)


def test_small_resnet_uses_it_and_round_trips_through_a_keras_file(tmp_path):
    model = small_resnet(16, width=8)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, FusedBatchNormalization) for layer in norms)
    x = np.random.default_rng(1).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    model(x, training=True)  # moves the statistics
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("stem_bn"), FusedBatchNormalization)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5)


def test_weight_files_of_models_with_keras_own_batchnorm_load_both_ways(tmp_path):
    # Keras names a layer's weights in a weights file after its class: a model built before tfsim
    # fused its BatchNorm (Keras's own layers, the same config) and one built now read each other's.
    model = small_resnet(16, width=8)
    unfused = keras.models.clone_model(model, clone_function=lambda layer: (
        keras.layers.BatchNormalization if isinstance(layer, keras.layers.BatchNormalization)
        else layer.__class__).from_config(layer.get_config()))
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in unfused.layers)
    rng = np.random.default_rng(3)
    for source, target in ((unfused, model), (model, unfused)):
        source.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in source.get_weights()])
        path = tmp_path / f"{source.name}-{len(list(tmp_path.iterdir()))}.weights.h5"
        source.save_weights(path)
        target.load_weights(path)
        for a, b in zip(source.get_weights(), target.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # builds ResNet50 twice (about 5 s)
def test_resnet50_norms_are_fused_copies_of_keras_applications_own(tmp_path):
    from tfsim.models.backbones import resnet50, with_fused_norms
    keras.utils.set_random_seed(0)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    copy = with_fused_norms(base)
    kinds = {type(layer) for layer in copy.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert kinds == {FusedBatchNormalization} and len(copy.layers) == len(base.layers)
    assert [w.path for w in copy.weights] == [w.path for w in base.weights]  # (a .keras file's names)
    x = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(copy(x, training=False).numpy(), base(x, training=False).numpy(), rtol=1e-4,
                               atol=1e-4)
    # In training, 53 batch normalisations of 4 images (1 x 1 maps at the end) in a row: the two
    # kernels' float32 roundings compound, to 0.15% of the outputs' norm here (each layer alone agrees
    # to 1e-4: the tests above).
    trained, reference = copy(x, training=True).numpy(), base(x, training=True).numpy()
    assert np.linalg.norm(trained - reference) < 0.01 * np.linalg.norm(reference)
    norms = [layer for layer in resnet50(32).layers[-1].layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 53 and all(isinstance(layer, FusedBatchNormalization) for layer in norms)
