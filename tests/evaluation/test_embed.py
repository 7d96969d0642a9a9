"""`embed`: a whole set's embeddings in order, each model traced once whatever the batch sizes."""

import keras
import numpy as np
import tensorflow as tf

from tfsim.data import sources
from tfsim.evaluation.embed import embed


class CountingEmbedder(keras.Model):
    """Flatten -> Dense; `traces` counts the runs of `call` in a graph (once per tf.function trace)."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4)
        self.traces = 0

    def call(self, images, training=False):
        self.traces += not tf.executing_eagerly()
        return self.dense(keras.ops.reshape(images, (-1, 8 * 8 * 3)))

    @classmethod
    def built(cls):
        model = cls()
        model(np.zeros((1, 8, 8, 3), np.float32))  # (Keras builds it with a symbolic call)
        model.traces = 0
        return model


def image_set(n: int, seed: int) -> sources.ImageSet:
    rng = np.random.default_rng(seed)
    return sources.ImageSet(labels=np.zeros(n, np.int32), ids=np.array([f"x:{i}" for i in range(n)]),
                            class_names=("a",), images=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8))


def test_embed_traces_each_model_once_and_keeps_row_order():
    model = CountingEmbedder.built()
    sets = [image_set(10, 0), image_set(7, 1), image_set(3, 2)]  # batches of 4: 4, 4, 2 / 4, 3 / 3
    out = [embed(model, s, 8, batch_size=4) for s in sets]
    assert model.traces == 1  # not once per batch size (Keras `predict`: 4, 2 and 3)
    assert len(out) == len(sets)
    for s, got in zip(sets, out):
        want = np.asarray(model(s.images.astype(np.float32)))
        assert got.dtype == np.float32 and got.shape == (len(s), 4)
        # float32 sums over different batch shapes differ in the last bits of values near 300; a
        # row out of place differs by hundreds
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())

    other = CountingEmbedder.built()  # another model: its own trace
    embed(other, sets[0], 8, batch_size=4)
    embed(other, sets[1], 8, batch_size=4)
    assert other.traces == 1


def test_a_set_of_one_batch_is_embedded_without_tracing():
    model = CountingEmbedder.built()
    small = image_set(3, 3)
    got = embed(model, small, 8, batch_size=4)
    assert model.traces == 0  # one eager call
    np.testing.assert_allclose(got, np.asarray(model(small.images.astype(np.float32))), rtol=1e-5, atol=1e-6)
