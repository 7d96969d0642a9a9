"""Batch samplers, as tf.data pipelines of *row indices* into an ImageSet.

* `pk_batches`: online P x K batches for the mining losses: P distinct classes,
  K images each, laid out label-contiguously (`[c0]*K + [c1]*K + ...`), so that when
  tf.distribute cuts the global batch into contiguous per-replica slices, a replica
  holds whole classes as long as P is a multiple of the replica count.
* `random_batches`: B distinct images drawn uniformly (for proxy losses, which need
  no positives in the batch).
* `triplet_batches`: explicit (query, positive, negative) triplets for the triplet
  margin loss: Q queries drawn uniformly, and for each query `triplets_per_query`
  triplets, each with a positive drawn from the query's class (never the query
  itself) and a negative drawn uniformly from all images of the other classes.
  Rows are `q, p, n, q, p', n', ...`; a replica's contiguous slice holds whole
  triplets when the number of triplets is a multiple of the replica count.

Batches are *step-indexed*: batch `s` is a pure function of `(seed, s)` computed
with stateless random ops. Consequences: the same seed gives the same batches;
every batch (so every epoch) is drawn afresh; and a resumed run that starts the
stream at `start_step` sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfsim import options
from tfsim.errors import UserInputError

log = logging.getLogger(__name__)


def class_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by class, without a per-class loop (O(N log N), O(N + C) memory).

    Returns:
        `(classes [C], counts [C], starts [C], order [N])`: the rows of class `classes[i]` are
        `order[starts[i]:starts[i] + counts[i]]`, in increasing order.
    """
    classes, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    order = np.argsort(inverse.reshape(-1), kind="stable").astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return classes, counts, starts, order


def check_options(kind: str, batch_size=None, classes_per_batch=None, examples_per_class=None,
                  triplets_per_query=None, small_classes=None) -> None:
    """Checks a sampler kind's options without the data (None = not set); raises UserInputError.
    The one definition is `tfsim.options.check_sampler_options`, which the config uses too."""
    options.check_sampler_options(kind, batch_size=batch_size, classes_per_batch=classes_per_batch,
                                  examples_per_class=examples_per_class, triplets_per_query=triplets_per_query,
                                  small_classes=small_classes)


def check_pk(labels: np.ndarray, classes_per_batch: int, examples_per_class: int,
             small_classes: str = "replace") -> None:
    """Raises UserInputError if a P x K batch cannot be drawn from `labels`."""
    if classes_per_batch is None or examples_per_class is None:
        raise UserInputError("Invalid P x K sampler: expected `classes_per_batch` and `examples_per_class`. "
                             f"Received: classes_per_batch={classes_per_batch!r}, "
                             f"examples_per_class={examples_per_class!r}")
    check_options("pk", classes_per_batch=classes_per_batch, examples_per_class=examples_per_class,
                  small_classes=small_classes)
    _, counts = np.unique(labels, return_counts=True)
    num_classes = len(counts)
    batch = classes_per_batch * examples_per_class
    if classes_per_batch > num_classes:
        raise UserInputError(
            f"Invalid value for `classes_per_batch`: a P x K batch holds P distinct classes, and the training "
            f"set has only {num_classes} classes. Expected 2..{num_classes}. Received: "
            f"classes_per_batch={classes_per_batch}")
    if batch > len(labels):
        raise UserInputError(
            f"The P x K batch ({classes_per_batch} classes x {examples_per_class} images = {batch} images) holds "
            f"more images than the training set ({len(labels)}). Lower `examples_per_class` to at most "
            f"{len(labels) // classes_per_batch}.")
    usable = int((counts >= examples_per_class).sum())
    if small_classes == "skip" and usable < classes_per_batch:
        raise UserInputError(
            f"Only {usable} training classes have at least K={examples_per_class} images, fewer than "
            f"`classes_per_batch`={classes_per_batch}, and `small_classes`='skip' leaves the others out. Lower "
            "`examples_per_class` or `classes_per_batch`, or sample small classes with replacement "
            "(small_classes='replace').")


def pk_batches(labels: np.ndarray, classes_per_batch: int, examples_per_class: int,
               seed: int = 0, start_step: int = 0, small_classes: str = "replace") -> tf.data.Dataset:
    """Infinite dataset of P x K index batches.

    Args:
        labels: int `[N]` labels of the rows to sample from.
        classes_per_batch: P, distinct classes per batch.
        examples_per_class: K, images per class (>= 2).
        seed: the stream's seed.
        start_step: index of the first batch (to resume).
        small_classes: a class with fewer than K images is sampled with replacement
            ("replace", a warning counts them) or never drawn ("skip").

    Returns:
        `tf.data.Dataset` of int32 `[P * K]` row indices; rows `[i*K:(i+1)*K]` share a class.

    Memory and time do not grow with the number of classes beyond the index arrays: rows are
    grouped by class once (`class_index`, no per-class loop), and each step draws P classes
    and K of each one's rows by gathering from them; the per-step work is P x (the largest
    class's size) random keys.

    Raises:
        UserInputError: K < 2, P < 2, a batch larger than the data, or (with "skip") fewer
            than P classes of at least K images.
    """
    labels = np.asarray(labels)
    check_pk(labels, classes_per_batch, examples_per_class, small_classes)
    classes, counts, starts, order = class_index(labels)
    small = counts < examples_per_class
    if small.any() and small_classes == "skip":
        log.warning("%d classes have fewer than K=%d images and are left out of the batches: %s", int(small.sum()),
                    examples_per_class, classes[small][:10].tolist())
        classes, counts, starts = classes[~small], counts[~small], starts[~small]
    elif small.any():
        log.warning("%d classes have fewer than K=%d images and are sampled with replacement: %s", int(small.sum()),
                    examples_per_class, classes[small][:10].tolist())
    order_t, starts_t = tf.constant(order), tf.constant(starts)
    counts_t = tf.constant(counts.astype(np.int32))
    p, k, width, num_classes = classes_per_batch, examples_per_class, int(counts.max()), len(classes)
    base = tf.constant([seed, 0x5EED], tf.int64)

    @tf.autograph.experimental.do_not_convert  # (tensor ops only: nothing for AutoGraph to convert)
    def draw(step):
        s_class, s_rank, s_repl = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(base, step), num=3))
        chosen = tf.argsort(tf.random.stateless_uniform([num_classes], seed=s_class))[:p]
        n = tf.gather(counts_t, chosen)[:, None]  # [P, 1]
        # K distinct rows: the first K of a random permutation of each class's rows.
        keys = tf.random.stateless_uniform([p, width], seed=s_rank)
        keys = tf.where(tf.range(width)[None, :] < n, keys, 2.0)
        distinct = tf.argsort(keys, axis=1)[:, :k]
        with_repl = tf.cast(tf.random.stateless_uniform([p, k], seed=s_repl) * tf.cast(n, tf.float32), tf.int32)
        pos = tf.where(n >= k, distinct, tf.minimum(with_repl, n - 1))  # [P, K], each < n
        rows = tf.gather(starts_t, chosen)[:, None] + tf.cast(pos, tf.int64)
        return tf.reshape(tf.gather(order_t, rows), [-1])

    return tf.data.Dataset.counter(start_step, dtype=tf.int64).map(draw)


def random_batches(num_rows: int, batch_size: int, seed: int = 0, start_step: int = 0) -> tf.data.Dataset:
    """Infinite dataset of `batch_size` distinct row indices drawn uniformly, step-indexed.

    Args:
        num_rows: N, rows to draw from (>= batch_size).
        batch_size: B.
        seed: the stream's seed.
        start_step: index of the first batch (to resume).

    Raises:
        UserInputError: a batch larger than the data.
    """
    if batch_size > num_rows:
        raise UserInputError(
            f"Invalid value for `batch_size`: expected at most the {num_rows} training images. "
            f"Received: batch_size={batch_size}")
    base = tf.constant([seed, 0xBA7C4], tf.int64)

    @tf.autograph.experimental.do_not_convert  # (tensor ops only: nothing for AutoGraph to convert)
    def draw(step):
        keys = tf.random.stateless_uniform([num_rows], seed=tf.random.experimental.stateless_fold_in(base, step))
        return tf.cast(tf.argsort(keys)[:batch_size], tf.int32)

    return tf.data.Dataset.counter(start_step, dtype=tf.int64).map(draw)


def epoch_batches(num_rows: int, batch_size: int, steps_per_epoch: int, seed: int = 0,
                  start_step: int = 0) -> tf.data.Dataset:
    """Infinite dataset of `batch_size` row indices, each row once per epoch.

    Epoch `e` is a seeded permutation of the rows cut into `steps_per_epoch` consecutive
    batches (the `num_rows - steps_per_epoch * batch_size` rows left over are the next
    epoch's chance: each epoch has its own permutation). For proxy losses, and for data whose
    small classes P x K sampling would over-sample. Step-indexed like the other samplers: a
    resumed run sees the batches an uninterrupted one would.

    Raises:
        UserInputError: a batch larger than the data, or more steps than one pass holds.
    """
    if batch_size > num_rows:
        raise UserInputError(
            f"Invalid value for `batch_size`: expected at most the {num_rows} training images. "
            f"Received: batch_size={batch_size}")
    if not 1 <= steps_per_epoch <= num_rows // batch_size:
        raise UserInputError(
            f"Invalid value for `steps_per_epoch`: expected 1..{num_rows // batch_size} (one pass over {num_rows} "
            f"images in batches of {batch_size}) for epoch batches. Received: steps_per_epoch={steps_per_epoch}")
    base = tf.constant([seed, 0xE90C], tf.int64)
    start_epoch, skip = divmod(start_step, steps_per_epoch)

    @tf.autograph.experimental.do_not_convert  # (as `draw` above)
    def one_epoch(epoch):
        keys = tf.random.stateless_uniform([num_rows], seed=tf.random.experimental.stateless_fold_in(base, epoch))
        rows = tf.cast(tf.argsort(keys)[: steps_per_epoch * batch_size], tf.int32)
        return tf.data.Dataset.from_tensor_slices(tf.reshape(rows, [steps_per_epoch, batch_size]))

    return tf.data.Dataset.counter(start_epoch, dtype=tf.int64).flat_map(one_epoch).skip(skip)


def check_triplets(labels: np.ndarray) -> None:
    """Raises UserInputError unless some class has >= 2 images and there are >= 2 classes."""
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or counts.max() < 2:
        raise UserInputError(
            "Invalid training set for triplets: expected at least 2 classes and a class with at least 2 images. "
            f"Received: {len(classes)} classes, at most {counts.max() if len(counts) else 0} images per class. "
            "Hold out fewer classes or add images.")


def triplet_batches(labels: np.ndarray, num_triplets: int, triplets_per_query: int = 4, seed: int = 0,
                    start_step: int = 0) -> tf.data.Dataset:
    """Infinite dataset of explicit (query, positive, negative) triplets, step-indexed.

    Args:
        labels: int `[N]` labels of the rows to sample from.
        num_triplets: T, triplets per batch (a multiple of `triplets_per_query` is
            natural; otherwise the last query has fewer triplets).
        triplets_per_query: triplets sharing each query.
        seed: the stream's seed.
        start_step: index of the first batch (to resume).

    Returns:
        `tf.data.Dataset` of int32 `[3 * T]` row indices `q_0, p_0, n_0, q_1, ...`.
        Queries are drawn (uniformly, distinct within a batch) among images whose class
        has another image.

    Raises:
        UserInputError: no class with two images, or a single class.
    """
    labels = np.asarray(labels)
    check_triplets(labels)
    if num_triplets < 1 or triplets_per_query < 1:
        raise UserInputError(
            "Invalid value for `num_triplets` or `triplets_per_query`: expected at least one triplet and "
            f"triplets_per_query >= 1. Received: num_triplets={num_triplets}, "
            f"triplets_per_query={triplets_per_query}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable").astype(np.int32)  # rows grouped by class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    position = np.empty(len(labels), np.int32)  # each row's rank inside its class
    position[order] = np.arange(len(labels), dtype=np.int32) - np.repeat(starts, counts)
    queryable = np.flatnonzero(counts[inverse] >= 2).astype(np.int32)
    n_queries = -(-num_triplets // triplets_per_query)
    if n_queries > len(queryable):
        raise UserInputError(
            f"Invalid value for `num_triplets`: expected at most {len(queryable)} distinct queries per batch "
            f"(the images that have another image of their class). Received: {num_triplets} triplets in "
            f"{n_queries} queries. Lower `num_triplets` or raise `triplets_per_query`.")
    t = {k: tf.constant(v) for k, v in dict(order=order, starts=starts, counts=counts.astype(np.int32),
                                             cls=inverse.astype(np.int32), pos=position, queryable=queryable).items()}
    n_rows = len(labels)
    base = tf.constant([seed, 0x7819], tf.int64)

    @tf.autograph.experimental.do_not_convert  # (tensor ops only: nothing for AutoGraph to convert)
    def draw(step):
        s_q, s_p, s_n = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(base, step), num=3))
        pick = tf.argsort(tf.random.stateless_uniform([len(queryable)], seed=s_q))[:n_queries]
        queries = tf.repeat(tf.gather(t["queryable"], pick), triplets_per_query)[:num_triplets]
        qc = tf.gather(t["cls"], queries)
        n_same = tf.gather(t["counts"], qc)
        # Positive: a uniform rank among the class's other n-1 rows (skip the query's own rank).
        u = tf.random.stateless_uniform([num_triplets], seed=s_p)
        rank = tf.minimum(tf.cast(u * tf.cast(n_same - 1, tf.float32), tf.int32), n_same - 2)
        rank = rank + tf.cast(rank >= tf.gather(t["pos"], queries), tf.int32)
        positives = tf.gather(t["order"], tf.gather(t["starts"], qc) + rank)
        # Negative: a uniform rank among the N - n rows of other classes (skip the class's block).
        v = tf.random.stateless_uniform([num_triplets], seed=s_n)
        rank = tf.minimum(tf.cast(v * tf.cast(n_rows - n_same, tf.float32), tf.int32), n_rows - n_same - 1)
        start = tf.gather(t["starts"], qc)
        rank = rank + tf.where(rank >= start, n_same, 0)
        negatives = tf.gather(t["order"], rank)
        return tf.reshape(tf.stack([queries, positives, negatives], axis=1), [-1])

    return tf.data.Dataset.counter(start_step, dtype=tf.int64).map(draw)
