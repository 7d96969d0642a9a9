"""NCA loss: neighbourhood component analysis on a batch (Goldberger et al., NIPS 2004).

Each anchor i picks a neighbour j != i of the batch with probability
p_ij = exp(-scale d_ij) / sum_{k != i} exp(-scale d_ik), d the squared Euclidean distance
of the embeddings. NCA maximises the probability that the picked neighbour has i's
class, p_i = sum_{j in P_i} p_ij; as a loss, per anchor -log p_i (the log-likelihood form
the paper gives as an alternative objective, and the one used in deep metric learning,
e.g. pytorch-metric-learning's NCALoss), averaged over the anchors that have a
positive. Anchors without a positive are skipped; a batch with none gives 0.

Reference: Goldberger, Roweis, Hinton & Salakhutdinov, "Neighbourhood Components
Analysis", NIPS 2004 (published 2005).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim import distances
from tfsim.losses import _masks
from tfsim.losses.base import MetricLoss

def nca_terms(labels, embeddings, scale: float = 1.0, num_anchors=None):
    """Per-anchor -log p_i `[B]` (0 for anchors without a positive) and their count; `num_anchors`
    A: only the first A rows are anchors, every row is a neighbour."""
    labels, embeddings, _ = _masks.prepare(labels, embeddings)
    if num_anchors is None:
        logits = -scale * distances.squared_l2_matrix(embeddings)
    else:
        logits = -scale * distances.squared_l2_between(embeddings[:num_anchors], embeddings)
    _, positive, _ = _masks.label_masks(labels, num_anchors)
    others = tf.logical_not(tf.cast(tf.eye(tf.shape(logits)[0], tf.shape(logits)[1]), tf.bool))
    log_p = _masks.masked_logsumexp(logits, positive) - _masks.masked_logsumexp(logits, others)
    valid = tf.reduce_any(positive, axis=1)
    c = tf.where(valid, -log_p, 0.0)
    return c, tf.reduce_sum(tf.cast(valid, c.dtype))


def nca_loss(labels, embeddings, scale: float = 1.0) -> tf.Tensor:
    """NCA loss of a batch (see module doc).

    Args:
        labels: int tensor `[B]` (or `[B, 1]`).
        embeddings: float tensor `[B, D]`; fp16/bf16 computed in fp32.
        scale: multiplies the squared distances (a softmax inverse temperature; 1 = the paper).

    Returns:
        Scalar loss; 0 when no anchor has a positive.

    Example:
        >>> loss = nca_loss([0, 0, 1, 1], tf.random.normal([4, 8]))
    """
    return _masks.reduce_terms(nca_terms(labels, embeddings, scale), tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class NCALoss(MetricLoss):
    """Keras loss class of `nca_loss`.

    Args:
        scale: see `nca_loss` (default 1).
        cross_replica: under MirroredStrategy, use the global batch (see `base`).
        name: the loss name.
    """

    terms = staticmethod(nca_terms)
    _args = ("scale",)

    def __init__(self, scale: float = 1.0, cross_replica: bool = False, name: str = "nca_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.scale = _masks.check_positive("scale", scale)
