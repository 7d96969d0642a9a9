"""The per-epoch evaluation's embedding: one trace per model whatever the last batch's size (the
evaluation set's 10 images in batches of 4, 4 and 2), the same embeddings as Keras' `predict`."""

import keras
import numpy as np
import tensorflow as tf

from tfsim.evaluation import embed
from tfsim.training.callbacks import RetrievalEvaluation


def tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5),
                             keras.layers.UnitNormalization()])


def test_the_epoch_evaluation_reuses_its_function_and_follows_a_new_model():
    images = np.random.default_rng(1).uniform(0, 255, (10, 4, 4, 3)).astype(np.float32)
    labels = np.repeat([0, 1], 5)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)
    first, second = tiny_model(0), tiny_model(1)
    evaluation = RetrievalEvaluation(dataset, labels, ks=(1,), embedder=first)
    logs: dict = {}
    evaluation.on_epoch_end(0, logs)
    evaluation.on_epoch_end(1, logs)
    # (the function `embed_dataset` keeps with the model)
    assert embed._cached(first)[1].experimental_get_tracing_count() == 1 and len(evaluation.history) == 2
    np.testing.assert_allclose(evaluation.last_embeddings, first.predict(dataset, verbose=0), atol=1e-6)
    assert set(logs) == {"val_recall_at_1", "val_map_at_r"}
    evaluation.embedder = second
    evaluation.on_epoch_end(2, logs)
    np.testing.assert_allclose(evaluation.last_embeddings, second.predict(dataset, verbose=0), atol=1e-6)
