"""Shared pieces of the metric losses: label masks, casting, safe reductions and argument checks.

Every mining loss starts from the same three masks of a batch of labels `[B]`:
`same` (y_i == y_j, diagonal included), `positive` (same class, i != j) and
`negative` (different class). Keeping them here means one definition of
"positive pair" across the family.
"""

from __future__ import annotations

import tensorflow as tf

_LOW_PRECISION = (tf.float16, tf.bfloat16)
_FAR = -1e9  # an exponent standing in for "not in the sum": exp underflows to exactly 0


def prepare(labels, embeddings):
    """Converts inputs the way tensorflow-addons does.

    Args:
        labels: `[B]` or `[B, 1]` class ids (any numeric dtype).
        embeddings: `[B, D]` float tensor; fp16/bf16 are computed in fp32.

    Returns:
        `(labels [B, 1], embeddings [B, D] float32-or-wider, original dtype)`.
    """
    embeddings = tf.convert_to_tensor(embeddings)
    dtype = embeddings.dtype
    if dtype in _LOW_PRECISION:
        embeddings = tf.cast(embeddings, tf.float32)
    labels = tf.convert_to_tensor(labels)
    labels = tf.reshape(labels, [tf.shape(labels)[0], 1])
    return labels, embeddings, dtype


def label_masks(labels: tf.Tensor, num_anchors=None):
    """Returns `(same, positive, negative)` boolean `[B, B]` masks for labels `[B, 1]`.

    With `num_anchors` A: `[A, B]` masks of the first A rows (the anchors) against all B (the
    anchors, then references such as a cross-batch memory); row i is "itself" at column i."""
    if num_anchors is None:
        same = tf.equal(labels, tf.transpose(labels))
        eye = tf.cast(tf.eye(tf.shape(labels)[0]), tf.bool)
    else:
        same = tf.equal(labels[:num_anchors], tf.transpose(labels))
        eye = tf.cast(tf.eye(num_anchors, tf.shape(labels)[0]), tf.bool)
    return same, tf.logical_and(same, tf.logical_not(eye)), tf.logical_not(same)


def masked_max(x: tf.Tensor, mask: tf.Tensor, axis: int = 1) -> tf.Tensor:
    """Max of `x` over `mask`; rows with an empty mask give the plain row minimum.

    This matches tensorflow-addons' `_masked_maximum` (whose empty-row value is the
    row minimum), which the tfa-compatible losses inherit.
    """
    low = tf.reduce_min(x, axis=axis, keepdims=True)
    return tf.reduce_max(tf.where(mask, x, low), axis=axis)


def masked_min(x: tf.Tensor, mask: tf.Tensor, axis: int = 1) -> tf.Tensor:
    """Min of `x` over `mask`; rows with an empty mask give the plain row maximum."""
    high = tf.reduce_max(x, axis=axis, keepdims=True)
    return tf.reduce_min(tf.where(mask, x, high), axis=axis)


def masked_logsumexp(x: tf.Tensor, mask: tf.Tensor, axis: int = 1) -> tf.Tensor:
    """log(sum over `mask` of exp(x)) along `axis`, stable; an empty row gives about -1e9
    (finite, with zero gradient), which callers either mask out or pass through softplus."""
    return tf.reduce_logsumexp(tf.where(mask, x, _FAR), axis=axis)


def check_non_negative(name: str, value) -> float:
    """`float(value)` if it is >= 0, else a Keras-style ValueError naming the argument."""
    value = float(value)
    if not value >= 0:
        raise ValueError(f"Invalid value for `{name}`: expected a number >= 0. Received: {name}={value!r}")
    return value


def check_positive(name: str, value) -> float:
    """`float(value)` if it is > 0, else a Keras-style ValueError naming the argument."""
    value = float(value)
    if not value > 0:
        raise ValueError(f"Invalid value for `{name}`: expected a number > 0. Received: {name}={value!r}")
    return value


def finish(loss: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Casts a float32 loss back to the caller's low-precision dtype, as tfa does."""
    return tf.cast(loss, dtype) if dtype in _LOW_PRECISION else loss


def reduce_terms(terms, dtype: tf.DType, scale: float = 1.0) -> tf.Tensor:
    """`sum(c) / Z * scale` of a loss's `(c [B], Z)` terms, 0 when Z is 0, in the caller's dtype."""
    c, z = terms
    return finish(tf.math.divide_no_nan(tf.reduce_sum(c), z) * scale, dtype)


def per_pair_type_means(pos_cost: tf.Tensor, neg_cost: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor):
    """Terms `(c [B], Z = 1)` of "mean cost over positive pairs + mean cost over negative pairs".

    Each anchor's row sums are divided by the batch's pair counts, so summing c over any
    subset of anchors (a replica's slice) gives that subset's share of the batch loss.
    `pos_cost`/`neg_cost` are `[B, B]`, already zero outside their masks.
    """
    pos, neg = tf.cast(positive, pos_cost.dtype), tf.cast(negative, neg_cost.dtype)
    c = (tf.math.divide_no_nan(tf.reduce_sum(pos_cost * pos, axis=1), tf.reduce_sum(pos))
         + tf.math.divide_no_nan(tf.reduce_sum(neg_cost * neg, axis=1), tf.reduce_sum(neg)))
    return c, tf.constant(1.0, c.dtype)
