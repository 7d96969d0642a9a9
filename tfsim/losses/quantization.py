"""The quantisation term of learning to hash: a batch loss on relaxed codes plus a push to +-1."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfsim")
class WithQuantization(keras.losses.Loss):
    """`inner(y_true, u) + weight * mean((|u| - 1)^2)` over the relaxed codes u (tanh outputs).

    The inner loss's own `call` is used, so Keras reduces and scales the sum once (under
    tf.distribute too); `get_config` round-trips the inner loss.

    Args:
        inner: a Keras loss (e.g. `TripletSemiHardLoss`).
        weight: the quantisation term's weight (>= 0).
    """

    def __init__(self, inner, weight: float = 0.1, name: str = "with_quantization", **kwargs):
        super().__init__(name=name, **kwargs)
        self.inner = keras.losses.deserialize(inner) if isinstance(inner, dict) else inner
        if not weight >= 0:
            raise ValueError(f"Invalid value for `weight`: expected a number >= 0. Received: weight={weight!r}")
        self.weight = float(weight)

    def call(self, y_true, y_pred):
        codes = keras.ops.cast(y_pred, "float32")
        quantization = keras.ops.mean(keras.ops.square(keras.ops.abs(codes) - 1.0))
        return self.inner.call(y_true, y_pred) + self.weight * quantization

    def get_config(self):
        config = super().get_config()
        config.update(inner=keras.losses.serialize(self.inner), weight=self.weight)
        return config
