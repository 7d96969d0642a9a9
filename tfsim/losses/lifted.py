"""Lifted structured loss, with tensorflow-addons 0.23 semantics, in O(B^2) memory.

For each positive pair (i, j), with D the (non-squared) L2 distances of the raw
embeddings:

    J_ij = log( sum_{k neg of i} exp(margin - D_ik) + sum_{l neg of j} exp(margin - D_jl) ) + D_ij
    loss = sum over unordered positive pairs of max(J_ij, 0)^2 / (2 * number of unordered positive pairs)

tfa evaluates the two sums with one shift M_ij = max(m_i, m_j), m_i the largest
(margin - D_ik) over i's negatives, through a [B*B, B] tiled tensor. Here each row's
sum is computed once with its own shift m_i (T_i = sum_k exp(margin - D_ik - m_i))
and the pair's sum is rebuilt as exp(m_i - M_ij) T_i + exp(m_j - M_ij) T_j: the same
value, O(B^2) memory, and every exponent <= 0.

Differences from tfa, on purpose: no positive pair, or no negative anywhere, gives 0
with finite gradients (tfa: NaN).

Reference: Oh Song, Xiang, Jegelka & Savarese, "Deep Metric Learning via Lifted
Structured Feature Embedding", CVPR 2016, arXiv:1511.06452.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim import distances
from tfsim.losses import _masks
from tfsim.losses.base import MetricLoss


def lifted_terms(labels, embeddings, margin: float = 1.0, num_anchors=None):
    """Per-anchor sums `[B]` of 0.25 max(J, 0)^2 over ordered positive pairs, and half their number.
    `num_anchors` A: only the first A rows' pairs count (`[A]` terms); J_ij still sums the
    negatives of both i and j over every row."""
    labels, embeddings, _ = _masks.prepare(labels, embeddings)
    dist = distances.pairwise_l2(embeddings)
    _, positive, negative = _masks.label_masks(labels)
    diff = margin - dist
    row_shift = _masks.masked_max(diff, negative)[:, None]  # m_i, [B, 1]
    neg = tf.cast(negative, diff.dtype)
    # exp of a masked-out entry may overflow; zero its exponent before exp, not after.
    row_sum = tf.reduce_sum(tf.exp(tf.where(negative, diff - row_shift, 0.0)) * neg, axis=1, keepdims=True)
    if num_anchors is not None:  # the anchors' rows (each pair still sees both ends' negatives)
        _, positive, _ = _masks.label_masks(labels, num_anchors)
        dist, row_shift_a, row_sum_a = dist[:num_anchors], row_shift[:num_anchors], row_sum[:num_anchors]
    else:
        row_shift_a, row_sum_a = row_shift, row_sum
    pair_shift = tf.maximum(row_shift_a, tf.transpose(row_shift))  # M_ij
    pair_sum = (tf.exp(row_shift_a - pair_shift) * row_sum_a
                + tf.exp(tf.transpose(row_shift) - pair_shift) * tf.transpose(row_sum))
    has_neg = pair_sum > 0.0
    log_sum = tf.math.log(tf.where(has_neg, pair_sum, 1.0))
    j = tf.where(has_neg, pair_shift + log_sum + dist, 0.0)
    pos = tf.cast(positive, j.dtype)
    return 0.25 * tf.reduce_sum(tf.square(tf.maximum(j * pos, 0.0)), axis=1), tf.reduce_sum(pos) / 2.0


def lifted_struct_loss(labels, embeddings, margin: float = 1.0) -> tf.Tensor:
    """Lifted structured loss of a batch (tensorflow-addons semantics, see module doc).

    Args:
        labels: int tensor `[B]` (or `[B, 1]`).
        embeddings: float tensor `[B, D]`, not normalised by the loss.
        margin: the margin.

    Returns:
        Scalar loss; 0 when the batch has no positive pair or no negative.

    Example:
        >>> loss = lifted_struct_loss([0, 0, 1, 1], tf.random.normal([4, 8]))

    Reference: arXiv:1511.06452.
    """
    return _masks.reduce_terms(lifted_terms(labels, embeddings, margin), tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class LiftedStructLoss(MetricLoss):
    """Keras loss class of `lifted_struct_loss` (same name and arguments as tfa 0.23).

    Args:
        margin: the margin (default 1.0).
        cross_replica: under MirroredStrategy, mine against the global batch (see `base`).
        name: the loss name.
    """

    terms = staticmethod(lifted_terms)
    _args = ("margin",)

    def __init__(self, margin: float = 1.0, cross_replica: bool = False, name: str = "lifted_struct_loss",
                 **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.margin = _masks.check_non_negative("margin", margin)
