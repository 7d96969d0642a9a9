"""Proxy losses (normalized softmax, Proxy-NCA), the CosineProxies layer and ScaledAdam."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tfsim.losses import NormalizedSoftmaxLoss, ProxyNCALoss, normalized_softmax_loss, proxy_nca_loss
from tfsim.models import build_embedding_model
from tfsim.models.proxies import CosineProxies, build_proxy_trainer, embedder_of
from tfsim.training.optimizers import ScaledAdam

C = 5


def setup(seed, pattern, b=12, d=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, d)).astype(np.float32)
    labels = {"pxk": np.repeat(np.arange(b // 3) % C, 3), "random": rng.integers(0, C, size=b),
              "all_same": np.zeros(b, int), "all_distinct": np.arange(b) % C}[pattern].astype(np.int32)
    layer = CosineProxies(C, initializer=keras.initializers.RandomNormal(seed=seed))
    sims = layer(x)
    return labels, x, layer, sims


@pytest.mark.parametrize("fn,ref,arg", [(normalized_softmax_loss, reference.normalized_softmax, a)
                                        for a in (0.05, 0.3, 1.0)]
                         + [(proxy_nca_loss, reference.proxy_nca, a) for a in (1.0, 3.0, 16.0)])
@pytest.mark.parametrize("pattern", ["pxk", "random", "all_same", "all_distinct"])
def test_matches_reference(fn, ref, arg, pattern):
    # temperature (normalized softmax) or scale (Proxy-NCA)
    labels, x, layer, sims = setup(5, pattern)
    want = ref(labels, x, layer.proxies.numpy(), arg)
    np.testing.assert_allclose(float(fn(labels, sims, arg)), want, rtol=1e-5, atol=1e-6)


def test_golden_values():
    # x on proxy 0, proxy 1 orthogonal: similarities [1, 0].
    sims = tf.constant([[1.0, 0.0]])
    # normalized softmax, T=1: log(1 + e^-1); T=0.5: log(1 + e^-2); wrong class, T=0.05: ~20.
    assert float(normalized_softmax_loss([0], sims, 1.0)) == pytest.approx(np.log1p(np.exp(-1.0)), rel=1e-6)
    assert float(normalized_softmax_loss([0], sims, 0.5)) == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)
    assert float(normalized_softmax_loss([1], sims)) == pytest.approx(20.0 + np.log1p(np.exp(-20.0)), rel=1e-6)
    # Proxy-NCA: d(x, p0) = 0, d(x, p1) = 2; the positive is not in the denominator: 0 + log(e^-2) = -2.
    assert float(proxy_nca_loss([0], sims)) == pytest.approx(-2.0, abs=1e-6)
    assert float(proxy_nca_loss([1], sims)) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("fn,ref", [(normalized_softmax_loss, reference.normalized_softmax),
                                    (proxy_nca_loss, reference.proxy_nca)])
def test_gradients_match_finite_differences(fn, ref):
    labels, x, layer, _ = setup(8, "random", b=4, d=3)
    proxies = layer.proxies.numpy()
    xt, pt = tf.constant(x), tf.constant(proxies)
    with tf.GradientTape() as tape:
        tape.watch([xt, pt])
        sims = tf.matmul(tf.math.l2_normalize(xt, 1), tf.math.l2_normalize(pt, 1), transpose_b=True)
        loss = fn(labels, sims, 0.5)
    gx, gp = tape.gradient(loss, [xt, pt])
    eps = 1e-6
    for arr, grad, which in ((x, gx, "x"), (proxies, gp, "p")):
        num = np.zeros(arr.shape)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.astype(np.float64).copy(), arr.astype(np.float64).copy()
            plus[idx] += eps
            minus[idx] -= eps
            args = (lambda a: (labels, a, proxies, 0.5)) if which == "x" else (lambda a: (labels, x, a, 0.5))
            num[idx] = (ref(*args(plus)) - ref(*args(minus))) / (2 * eps)
        np.testing.assert_allclose(grad.numpy(), num, rtol=2e-3, atol=2e-5)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="Invalid value for `temperature`: expected a number > 0"):
        NormalizedSoftmaxLoss(temperature=0.0)
    with pytest.raises(ValueError, match="Invalid value for `scale`"):
        ProxyNCALoss(scale=-1)
    with pytest.raises(ValueError, match="Invalid value for `num_classes`"):
        CosineProxies(1)


def test_cosine_proxies_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = CosineProxies(3)
        out = layer(tf.random.normal([4, 8], dtype=tf.float16))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32 and layer.proxies.dtype == "float32"
    assert np.all(np.isfinite(out.numpy()))


def test_cosine_proxies_layer():
    layer = CosineProxies(3)
    x = tf.constant([[3.0, 0.0], [0.0, -2.0], [0.0, 0.0]])
    sims = layer(x).numpy()
    p = layer.proxies.numpy()
    want = (x.numpy()[:2] / np.linalg.norm(x.numpy()[:2], axis=1, keepdims=True)) @ (
        p / np.linalg.norm(p, axis=1, keepdims=True)).T
    np.testing.assert_allclose(sims[:2], want, rtol=1e-5)
    assert np.all(np.isfinite(sims)) and np.all(np.abs(sims) <= 1 + 1e-6)
    clone = CosineProxies.from_config(layer.get_config())
    assert clone.num_classes == 3


@pytest.mark.slow  # over a second and a half: kept out of the fast tier
def test_proxy_trainer_saves_and_gives_back_its_embedder(tmp_path):
    embedder = build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=0,
                                     layer_norm=True)
    norm = embedder.get_layer("pooled_layer_norm")  # layer norm without affine parameters
    assert not norm.center and not norm.scale and not norm.weights
    trainer = build_proxy_trainer(embedder, 4, seed=0)
    optimizer = ScaledAdam(1e-3, lr_multipliers={"proxies": 10.0})
    trainer.compile(optimizer=optimizer, loss=NormalizedSoftmaxLoss(temperature=0.1))
    scaled = [v.path for v in trainer.trainable_variables if optimizer.multiplier(v) != 1.0]
    assert scaled == ["proxies/proxies"]  # only the proxies get the multiplier
    images = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    labels = np.repeat(np.arange(4), 2)
    trainer.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    trainer.save(tmp_path / "t.keras")
    loaded = keras.models.load_model(tmp_path / "t.keras")
    assert isinstance(loaded.loss, NormalizedSoftmaxLoss) and loaded.loss.temperature == 0.1
    assert isinstance(loaded.optimizer, ScaledAdam) and loaded.optimizer.lr_multipliers == {"proxies": 10.0}
    np.testing.assert_allclose(embedder_of(loaded).predict(images, verbose=0),
                               embedder_of(trainer).predict(images, verbose=0), atol=1e-6)
    assert embedder_of(embedder) is embedder
    assert embedder_of(loaded).output_shape == (None, 8)


def _one_step(optimizer, grads):
    model_vars = [keras.Variable(np.ones((2, 2), np.float32), name="proxies"),
                  keras.Variable(np.ones((2,), np.float32), name="kernel")]
    optimizer.apply(grads, model_vars)
    return [v.numpy() - 1.0 for v in model_vars]


def test_scaled_adam_multiplies_only_the_named_layer():
    grads = [tf.constant([[0.3, -2.0], [1e-3, 5.0]]), tf.constant([0.7, -0.1])]
    scaled = _one_step(ScaledAdam(0.01, lr_multipliers={"proxies": 10.0}), grads)
    plain = _one_step(ScaledAdam(0.01), grads)
    fast = _one_step(ScaledAdam(0.1), grads)
    # (to a few float32 ulps: 0.01 x 10 is not exactly 0.1 in float32)
    np.testing.assert_allclose(scaled[0], fast[0], rtol=1e-5)
    np.testing.assert_allclose(scaled[1], plain[1], rtol=1e-6)
    assert np.abs(scaled[0]).max() > 5 * np.abs(plain[0]).max()
    with pytest.raises(ValueError, match="lr_multipliers"):
        ScaledAdam(0.01, lr_multipliers={"proxies": 0.0})
