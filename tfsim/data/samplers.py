"""Batch samplers, as tf.data pipelines of *row indices* into an ImageSet.

`pk_batches` yields online P x K batches for the mining losses: P distinct classes,
K images each, laid out label-contiguously (`[c0]*K + [c1]*K + ...`), so that when
tf.distribute cuts the global batch into contiguous per-replica slices, a replica
holds whole classes as long as P is a multiple of the replica count.

Batches are *step-indexed*: batch `s` is a pure function of `(seed, s)` computed
with stateless random ops. Consequences: the same seed gives the same batches;
every batch (so every epoch) is drawn afresh; and a resumed run that starts the
stream at `start_step` sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfsim.errors import UserInputError

log = logging.getLogger(__name__)


def check_pk(labels: np.ndarray, classes_per_batch: int, examples_per_class: int) -> None:
    """Raises UserInputError if a P x K batch cannot be drawn from `labels`."""
    if not isinstance(examples_per_class, (int, np.integer)) or examples_per_class < 2:
        raise UserInputError(
            "Invalid value for `sampler.examples_per_class`: expected an integer >= 2 so every batch "
            f"holds positive pairs. Received: examples_per_class={examples_per_class!r}")
    if not isinstance(classes_per_batch, (int, np.integer)) or classes_per_batch < 2:
        raise UserInputError(
            "Invalid value for `sampler.classes_per_batch`: expected an integer >= 2 so every batch "
            f"holds negatives. Received: classes_per_batch={classes_per_batch!r}")
    num_classes = len(np.unique(labels))
    batch = classes_per_batch * examples_per_class
    if classes_per_batch > num_classes or batch > len(labels):
        raise UserInputError(
            f"The P x K batch ({classes_per_batch} classes x {examples_per_class} images = {batch}) is larger "
            f"than the training set ({num_classes} classes, {len(labels)} images). Lower "
            f"`sampler.classes_per_batch` to at most {num_classes} or `sampler.examples_per_class`.")


def pk_batches(labels: np.ndarray, classes_per_batch: int, examples_per_class: int,
               seed: int = 0, start_step: int = 0) -> tf.data.Dataset:
    """Infinite dataset of P x K index batches.

    Args:
        labels: int `[N]` labels of the rows to sample from.
        classes_per_batch: P, distinct classes per batch.
        examples_per_class: K, images per class (>= 2). A class with fewer than K
            images is sampled with replacement (a warning says which).
        seed: the stream's seed.
        start_step: index of the first batch (to resume).

    Returns:
        `tf.data.Dataset` of int32 `[P * K]` row indices; rows `[i*K:(i+1)*K]` share a class.

    Raises:
        UserInputError: K < 2, P < 2, or a batch larger than the data.
    """
    labels = np.asarray(labels)
    check_pk(labels, classes_per_batch, examples_per_class)
    classes, counts = np.unique(labels, return_counts=True)
    small = classes[counts < examples_per_class]
    if small.size:
        log.warning("%d classes have fewer than K=%d images and are sampled with replacement: %s",
                    small.size, examples_per_class, small[:10].tolist())
    table = np.full((len(classes), counts.max()), -1, np.int32)
    for i, c in enumerate(classes):
        rows = np.flatnonzero(labels == c)
        table[i, : rows.size] = rows
    table_t, counts_t = tf.constant(table), tf.constant(counts.astype(np.int32))
    p, k, width = classes_per_batch, examples_per_class, table.shape[1]
    base = tf.constant([seed, 0x5EED], tf.int64)

    def draw(step):
        s_class, s_rank, s_repl = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(base, step), num=3))
        chosen = tf.argsort(tf.random.stateless_uniform([len(classes)], seed=s_class))[:p]
        n = tf.gather(counts_t, chosen)[:, None]  # [P, 1]
        # K distinct rows: the first K of a random permutation of each class's rows.
        keys = tf.random.stateless_uniform([p, width], seed=s_rank)
        keys = tf.where(tf.range(width)[None, :] < n, keys, 2.0)
        distinct = tf.argsort(keys, axis=1)[:, :k]
        with_repl = tf.cast(tf.random.stateless_uniform([p, k], seed=s_repl) * tf.cast(n, tf.float32), tf.int32)
        pos = tf.where(n >= k, distinct, tf.minimum(with_repl, n - 1))
        return tf.reshape(tf.gather(tf.gather(table_t, chosen), pos, batch_dims=1), [-1])

    return tf.data.Dataset.counter(start_step, dtype=tf.int64).map(draw)
