"""Contrastive loss with positive and negative margins (Hadsell, Chopra & LeCun, 2006).

For every ordered pair (i, j), i != j, with d the distance (`distance_metric`, default L2):

* positive pair: 1/2 max(d - pos_margin, 0)^2  (pulled together until within pos_margin)
* negative pair: 1/2 max(neg_margin - d, 0)^2  (pushed apart until beyond neg_margin)

loss = mean over positive pairs of the positive term + mean over negative pairs of the
negative term (each mean 0 when the batch has no such pair), so the many negative
pairs of a P x K batch do not drown the few positive ones. pos_margin=0 is the
original 2006 loss (with its margin m = neg_margin).

Reference: Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an
Invariant Mapping", CVPR 2006.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim import distances
from tfsim.losses import _masks
from tfsim.losses.base import MetricLoss


def contrastive_terms(labels, embeddings, pos_margin: float = 0.0, neg_margin: float = 1.0,
                      distance_metric: distances.DistanceMetric = "L2", num_anchors=None):
    """Per-anchor terms `[B]` with the pair-count normalisers folded in, and Z = 1; `num_anchors`
    A: only the first A rows are anchors (the pairs are theirs with every row)."""
    distances.check_distance_metric(distance_metric)
    labels, embeddings, _ = _masks.prepare(labels, embeddings)
    d = distances.pairwise_distances(embeddings, distance_metric, num_anchors)
    _, positive, negative = _masks.label_masks(labels, num_anchors)
    return _masks.per_pair_type_means(0.5 * tf.square(tf.maximum(d - pos_margin, 0.0)),
                                      0.5 * tf.square(tf.maximum(neg_margin - d, 0.0)), positive, negative)


def contrastive_loss(labels, embeddings, pos_margin: float = 0.0, neg_margin: float = 1.0,
                     distance_metric: distances.DistanceMetric = "L2") -> tf.Tensor:
    """Contrastive loss of a batch (see module doc).

    Args:
        labels: int tensor `[B]` (or `[B, 1]`).
        embeddings: float tensor `[B, D]`; fp16/bf16 computed in fp32.
        pos_margin: positive pairs closer than this cost nothing.
        neg_margin: negative pairs farther than this cost nothing.
        distance_metric: `"L2"`, `"squared-L2"`, `"angular"` or a callable.

    Returns:
        Scalar loss.

    Example:
        >>> loss = contrastive_loss([0, 0, 1, 1], tf.random.normal([4, 8]), neg_margin=0.5)
    """
    return _masks.reduce_terms(contrastive_terms(labels, embeddings, pos_margin, neg_margin, distance_metric),
                               tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class ContrastiveLoss(MetricLoss):
    """Keras loss class of `contrastive_loss`.

    Args:
        pos_margin, neg_margin, distance_metric: see `contrastive_loss` (defaults 0, 1, "L2").
        cross_replica: under MirroredStrategy, use the global batch (see `base`).
        name: the loss name.
    """

    terms = staticmethod(contrastive_terms)
    _args = ("pos_margin", "neg_margin", "distance_metric")

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0,
                 distance_metric: distances.DistanceMetric = "L2", cross_replica: bool = False,
                 name: str = "contrastive_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.pos_margin, self.neg_margin = float(pos_margin), float(neg_margin)
        self.distance_metric = distances.check_distance_metric(distance_metric)
