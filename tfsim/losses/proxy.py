"""Proxy losses: normalized softmax (Zhai & Wu, BMVC 2019) and Proxy-NCA (Movshovitz-Attias et al., 2017).

Both compare each embedding with one learned proxy per training class. The proxies are
the weights of `tfsim.models.proxies.CosineProxies` (a Keras loss cannot own trainable
weights), whose output, the cosine similarities `s [B, C]` of each L2-normalised
embedding to each L2-normalised proxy, is these losses' `y_pred`; `y_true` are the class
indices `[B]` in 0..C-1.

* **Normalized softmax**: cross-entropy of softmax(s / temperature); the paper's
  temperature is 0.05. The paper's other two ingredients are a model option (layer
  normalisation without affine parameters on the pooled features, config
  `model.layer_norm`) and an optimizer option (a separate learning rate for the proxies,
  config `loss.proxy_lr_multiplier`, implemented by `tfsim.training.optimizers.ScaledAdam`).
* **Proxy-NCA**: with d(x, p) = |x - p|^2 = 2 - 2 s on unit vectors,
  loss_i = -log( exp(-d(x_i, p_y)) / sum_{z != y} exp(-d(x_i, p_z)) ), the paper's
  formula: the positive proxy is *not* in the denominator (so the loss can be negative).
  `scale` multiplies the distances (1 = the paper; Proxy-NCA++ uses 1/temperature).

Both are per-sample losses with no mining, so under MirroredStrategy Keras's averaging
of per-sample losses is already exact; there is no `cross_replica` option.

References: Zhai & Wu, "Classification is a Strong Baseline for Deep Metric Learning",
BMVC 2019, arXiv:1811.12649. Movshovitz-Attias, Toshev, Leung, Ioffe & Singh, "No Fuss
Distance Metric Learning using Proxies", ICCV 2017, arXiv:1703.07464.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim.losses import _masks


def _prepare(labels, similarities):
    """Class indices `[B]` int32 and similarities (fp16/bf16 computed in fp32), as `_masks.prepare`."""
    labels, similarities, _ = _masks.prepare(labels, similarities)
    return tf.cast(tf.reshape(labels, [-1]), tf.int32), similarities


def normalized_softmax_per_sample(labels, similarities, temperature: float = 0.05) -> tf.Tensor:
    """Per-sample normalized softmax losses `[B]` (float32 for fp16/bf16 input)."""
    labels, sims = _prepare(labels, similarities)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=sims / temperature)


def proxy_nca_per_sample(labels, similarities, scale: float = 1.0) -> tf.Tensor:
    """Per-sample Proxy-NCA losses `[B]` (float32 for fp16/bf16 input)."""
    labels, sims = _prepare(labels, similarities)
    logits = -scale * (2.0 - 2.0 * sims)  # -scale * squared distance of unit vectors
    own = tf.one_hot(labels, tf.shape(sims)[1], on_value=True, off_value=False)
    positive = tf.reduce_sum(tf.where(own, logits, 0.0), axis=1)
    others = _masks.masked_logsumexp(logits, tf.logical_not(own))
    return others - positive


def normalized_softmax_loss(labels, similarities, temperature: float = 0.05) -> tf.Tensor:
    """Normalized softmax loss of a batch: mean cross-entropy of softmax(similarities / temperature).

    Args:
        labels: int tensor `[B]` of class indices in [0, C).
        similarities: float `[B, C]` cosine similarities to the class proxies
            (`CosineProxies` output); fp16/bf16 are computed in fp32.
        temperature: softmax temperature (paper: 0.05).

    Returns:
        Scalar loss in the dtype of `similarities`.

    Example:
        >>> loss = normalized_softmax_loss([0, 2], tf.constant([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7]]))

    Reference: arXiv:1811.12649.
    """
    dtype = tf.convert_to_tensor(similarities).dtype
    return _masks.finish(tf.reduce_mean(normalized_softmax_per_sample(labels, similarities, temperature)), dtype)


def proxy_nca_loss(labels, similarities, scale: float = 1.0) -> tf.Tensor:
    """Proxy-NCA loss of a batch (see module doc).

    Args:
        labels: int tensor `[B]` of class indices in [0, C), C >= 2.
        similarities: float `[B, C]` cosine similarities to the class proxies.
        scale: multiplies the squared distances (paper: 1).

    Returns:
        Scalar loss (mean over the batch) in the dtype of `similarities`.

    Example:
        >>> loss = proxy_nca_loss([0, 2], tf.constant([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7]]))

    Reference: arXiv:1703.07464.
    """
    dtype = tf.convert_to_tensor(similarities).dtype
    return _masks.finish(tf.reduce_mean(proxy_nca_per_sample(labels, similarities, scale)), dtype)


class ProxyLoss(keras.losses.Loss):
    """Base of the proxy losses: `y_pred` are `CosineProxies` similarities `[B, C]`.

    `call` returns per-sample losses and Keras reduces them (mean over the batch, and
    correctly averaged across replicas under tf.distribute).
    """

    input_kind = "proxy_similarities"
    _args: tuple[str, ...] = ()
    per_sample = None

    def call(self, y_true, y_pred):
        args = {k: getattr(self, k) for k in self._args}
        return type(self).per_sample(y_true, y_pred, **args)

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in self._args})
        return config


@keras.saving.register_keras_serializable(package="tfsim")
class NormalizedSoftmaxLoss(ProxyLoss):
    """Keras loss class of `normalized_softmax_loss` (train with `CosineProxies`).

    Args:
        temperature: softmax temperature (default 0.05, the paper's).
        name: the loss name.
    """

    per_sample = staticmethod(normalized_softmax_per_sample)
    _args = ("temperature",)

    def __init__(self, temperature: float = 0.05, name: str = "normalized_softmax_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = _masks.check_positive("temperature", temperature)


@keras.saving.register_keras_serializable(package="tfsim")
class ProxyNCALoss(ProxyLoss):
    """Keras loss class of `proxy_nca_loss` (train with `CosineProxies`).

    Args:
        scale: multiplies the squared distances (default 1, the paper's).
        name: the loss name.
    """

    per_sample = staticmethod(proxy_nca_per_sample)
    _args = ("scale",)

    def __init__(self, scale: float = 1.0, name: str = "proxy_nca_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = _masks.check_positive("scale", scale)
