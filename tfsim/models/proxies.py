"""Class proxies as layer weights, for the proxy losses (normalized softmax, Proxy-NCA).

A Keras `Loss` cannot own trainable weights, so the proxies (one learned vector per
training class) live in `CosineProxies`, a layer that maps embeddings `[B, D]` to
their cosine similarities with every proxy `[B, C]`. The proxy losses in
`tfsim.losses.proxy` take those similarities as `y_pred`.

Training wraps the embedder: `images -> embedder -> CosineProxies -> [B, C]`
(`build_proxy_trainer`). Only the embedder is evaluated and exported; the proxies are
saved in checkpoints (so a resumed run continues with them) and nowhere else.
The optimizer can give the proxies their own learning rate
(`tfsim.training.optimizers.ScaledAdam`, config `loss.proxy_lr_multiplier`).
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

PROXY_LAYER = "proxies"


@keras.saving.register_keras_serializable(package="tfsim")
class CosineProxies(keras.layers.Layer):
    """Cosine similarity of each embedding to each of `num_classes` learned proxies.

    Both the embeddings and the proxies are L2-normalised, so the output is in [-1, 1]
    and the proxies' norms never matter (only their directions are learned).

    Args:
        num_classes: number of proxies C (the training classes, labels 0..C-1).
        initializer: proxy initializer (default: unit-variance normal, as in the papers'
            code; any direction is equally good after normalisation).

    Input: float `[B, D]`. Output: float32 `[B, C]` (computed in float32 under mixed precision).

    Example:
        >>> layer = CosineProxies(10)
        >>> sims = layer(tf.random.normal([4, 16]))  # [4, 10]
    """

    def __init__(self, num_classes: int, initializer="random_normal", name: str = PROXY_LAYER, **kwargs):
        super().__init__(name=name, **kwargs)
        if int(num_classes) < 2:
            raise ValueError("Invalid value for `num_classes`: expected an integer >= 2 (one proxy per training "
                             f"class). Received: num_classes={num_classes!r}")
        self.num_classes = int(num_classes)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        # autocast=False: under a mixed-precision policy the proxies stay float32, like the output.
        self.proxies = self.add_weight(name="proxies", shape=(self.num_classes, int(input_shape[-1])),
                                       initializer=self.initializer, dtype="float32", autocast=False)

    def call(self, embeddings):
        x = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
        p = tf.math.l2_normalize(tf.cast(self.proxies, tf.float32), axis=-1)
        return tf.matmul(x, p, transpose_b=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, initializer=keras.initializers.serialize(self.initializer))
        return config


def build_proxy_trainer(embedder: keras.Model, num_classes: int, seed: Optional[int] = None) -> keras.Model:
    """`images -> embedder -> CosineProxies(num_classes)`: the model a proxy loss trains.

    Args:
        embedder: the embedding model (kept as one nested layer, retrievable with
            `embedder_of(trainer)`).
        num_classes: number of training classes (labels must be 0..num_classes-1).
        seed: seeds the proxy initializer.

    Returns:
        A functional `keras.Model` named "proxy_trainer" with output `[B, num_classes]`.
    """
    inputs = keras.Input(embedder.input_shape[1:], name="images")
    init = keras.initializers.RandomNormal(seed=seed)
    outputs = CosineProxies(num_classes, initializer=init, dtype="float32")(embedder(inputs))  # (mixed precision)
    return keras.Model(inputs, outputs, name="proxy_trainer")


def embedder_of(model: keras.Model) -> keras.Model:
    """The embedding model inside a proxy trainer or a cross-batch memory's trainer
    (`tfsim.losses.memory.MemoryTrainer`), or `model` itself if it is the embedder."""
    if model.name == "proxy_trainer":
        return model.get_layer("embedder")
    if model.name == "memory_trainer" or (hasattr(model, "memory") and isinstance(getattr(model, "embedder", None),
                                                                             keras.Model)):
        return model.embedder
    return model
