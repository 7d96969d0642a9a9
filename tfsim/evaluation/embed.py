"""Embedding a whole ImageSet with a model (in order, no augmentation).

Each model is run by one `tf.function` whose signature leaves the batch size open, so it is
traced once per model, however many sets it embeds and whatever their last batch's size; a
set of a single batch is embedded eagerly (tracing would cost more than the one call saves).
(Keras' `predict` traces its step function again for a last, smaller batch, and once per
new model; TensorFlow counts the traces of all those step functions together, since they
share their code, and warns of "excessive retracing" when a run embeds small sets with a
few models in turn, as the stages after training and the tune command's trials do.)
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from tfsim.data.pipeline import eval_dataset, without_autotune
from tfsim.data.sources import ImageSet

# model -> its embedding function; an entry goes with its model.
_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _open_batch(element_spec):
    """`element_spec` (a TensorSpec, or a nest of them for a model of several inputs) with its batch
    dimension left open."""
    return tf.nest.map_structure(lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype), element_spec)


def embedding_function(model, element_spec: tf.TensorSpec):
    """`images [B, S, S, 3] -> model(images, training=False)` as a `tf.function` traced once for
    every batch size (one device; not split across replicas).

    Args:
        model: a Keras model (or any callable taking `training=`).
        element_spec: the spec of the image batches (e.g. a dataset's `element_spec`; a nest of
            specs for a model of several inputs); its batch dimension is left open.
    """
    signature = [_open_batch(element_spec)]
    try:  # (a weak reference: the function, cached with its model as key, must not keep it alive)
        ref = weakref.ref(model)
    except TypeError:
        ref = lambda: model  # noqa: E731
    return tf.function(lambda images: ref()(images, training=False), input_signature=signature)


def _cached(model):
    try:
        return _FUNCTIONS.get(model)
    except TypeError:  # (not weakly referenceable: no cache)
        return None


def _function_for(model, element_spec: tf.TensorSpec):
    spec = _open_batch(element_spec)
    cached = _cached(model)
    if cached is None or cached[0] != spec:
        cached = (spec, embedding_function(model, spec))
        try:
            _FUNCTIONS[model] = cached
        except TypeError:
            pass
    return cached[1]


def embed_dataset(model, dataset: tf.data.Dataset, verbose: int = 0, eager: bool = False) -> np.ndarray:
    """`[N, D]` float32 embeddings of a dataset of image batches (`eval_dataset`), in order: with
    the model's embedding function (`embedding_function`, made once per model), or eagerly when
    the dataset is one batch and the model has none yet. `verbose`: a progress bar over the batches.
    `eager`: call the model batch by batch outside any tf.function (under a multi-worker strategy,
    where each task embeds alone).

    Example:
        >>> embed_dataset(embedder, eval_dataset(images, 224))
    """
    batches = int(dataset.cardinality())
    cached = _cached(model)
    if eager or (batches == 1 and cached is None):
        run = lambda images: model(images, training=False)  # noqa: E731
    else:
        run = _function_for(model, dataset.element_spec)
    bar = keras.utils.Progbar(batches if batches > 0 else None, verbose=verbose) if verbose else None
    out = []
    for batch in without_autotune(dataset):  # (a user's dataset too: its deleted iterator must not wait)
        out.append(np.asarray(run(batch), np.float32))
        if bar is not None:
            bar.add(1)
    if not out:
        return np.zeros((0, int(model.output_shape[-1])), np.float32)
    return np.concatenate(out)


def embed_pairs(model, dataset: tf.data.Dataset, eager: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`(embeddings [N, D] float32, labels [N])` of a dataset of `(inputs, labels)` batches, each
    batch's labels read with its inputs in the same pass (so a dataset that shuffles stays aligned);
    the model's embedding function as `embed_dataset`'s (`eager`: as there)."""
    run = (lambda x: model(x, training=False)) if eager else _function_for(model, dataset.element_spec[0])
    out, labels = [], []
    for inputs, batch_labels in without_autotune(dataset):
        out.append(np.asarray(run(inputs), np.float32))
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not out:
        return np.zeros((0, int(model.output_shape[-1])), np.float32), np.zeros([0], np.int64)
    return np.concatenate(out), np.concatenate(labels)


def embed(model, images: ImageSet, image_size: int, batch_size: int = 256, verbose: int = 0,
          center_crop: float = 1.0) -> np.ndarray:
    """`[N, D]` float32 embeddings of every image of `images`, row-aligned with it (`center_crop`:
    see `tfsim.data.preprocess.preprocess`); `verbose`: a progress bar over the batches."""
    return embed_dataset(model, eval_dataset(images, image_size, batch_size, center_crop), verbose)
