"""The loss of learning to hash: a batch loss on the relaxed codes, seen at unit scale, plus a push to +-1.

A hash head's relaxed codes u are `code_bits` tanh outputs, so their lengths grow as
sqrt(code_bits): two +-1 codes at Hamming distance h are 2 sqrt(h) apart. The batch loss
sees u / sqrt(code_bits) instead (unit length when every output is +-1, like the
L2-normalised embeddings), so a loss's margin means the same at every code length and the
same as for the embedding head: with the L2 distance (the batch losses' default) a margin m
here is m sqrt(code_bits) on the raw codes (the Image-Retrieve project's margin 8 at 32 bits
is 1.41; with squared-L2 it is m code_bits; angular distances ignore the scale). The quantisation term is computed on
the raw codes.
"""

from __future__ import annotations

import math
import numbers

import keras


@keras.saving.register_keras_serializable(package="tfsim")
class HashingLoss(keras.losses.Loss):
    """`inner(y_true, u / sqrt(code_bits)) + weight * mean((|u| - 1)^2)` over the relaxed codes u.

    The inner loss's own `call` is used, so Keras reduces and scales the sum once (under
    tf.distribute too); `get_config` round-trips the inner loss.

    Args:
        inner: a Keras batch loss (e.g. `TripletSemiHardLoss`).
        code_bits: the code length (the codes' last dimension), > 0.
        weight: the quantisation term's weight (>= 0; 0 = none).
    """

    def __init__(self, inner, code_bits: int, weight: float = 0.0, name: str = "hashing", **kwargs):
        super().__init__(name=name, **kwargs)
        self.inner = keras.losses.deserialize(inner) if isinstance(inner, dict) else inner
        if not weight >= 0:
            raise ValueError(f"Invalid value for `weight`: expected a number >= 0. Received: weight={weight!r}")
        if isinstance(code_bits, bool) or not isinstance(code_bits, numbers.Integral) or code_bits < 1:
            raise ValueError(
                f"Invalid value for `code_bits`: expected an integer > 0. Received: code_bits={code_bits!r}")
        self.weight, self.code_bits = float(weight), int(code_bits)

    def call(self, y_true, y_pred):
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != self.code_bits:
            raise ValueError(f"Invalid codes for `HashingLoss`: expected {self.code_bits} code bits (the last "
                             f"dimension), got shape {tuple(y_pred.shape)}. Set code_bits to the model's code length.")
        codes = keras.ops.cast(y_pred, "float32")
        loss = self.inner.call(y_true, codes * (1.0 / math.sqrt(self.code_bits)))
        if self.weight:
            loss = loss + self.weight * keras.ops.mean(keras.ops.square(keras.ops.abs(codes) - 1.0))
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(inner=keras.losses.serialize(self.inner), code_bits=self.code_bits, weight=self.weight)
        return config

