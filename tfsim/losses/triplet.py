"""Triplet losses with online mining, with tensorflow-addons 0.23 semantics.

`triplet_semihard_loss` is the FaceNet semi-hard triplet loss as tfa defines it:
for every ordered positive pair (a, p), a != p, the negative is the one with the
smallest d(a, n) among negatives with d(a, n) > d(a, p) (strictly; no upper bound
at d(a, p) + margin); if there is none, the negative with the largest d(a, n)
(and, for an anchor with no negative at all, the row minimum of d(a, .), as in
tfa). Loss = sum over ordered positive pairs of max(d(a,p) - d(a,n) + margin, 0)
divided by their number.

Differences from tfa, on purpose:
* A batch with no positive pair gives 0 with zero (finite) gradients, where tfa
  gives NaN.
* Mining is O(B^2 log B) in time and O(B^2) in memory: each anchor's negative
  distances are sorted once and every positive distance is located in them by
  binary search, instead of tfa's [B*B, B] tiled tensor.

Reference: Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for
Face Recognition and Clustering", CVPR 2015, arXiv:1503.03832.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim import distances
from tfsim.losses import _masks
from tfsim.losses.base import MetricLoss


def semihard_terms(labels, embeddings, margin: float = 1.0, distance_metric: distances.DistanceMetric = "L2",
                   num_anchors=None):
    """Per-anchor hinge sums `[B]` and the number of positive pairs (see `triplet_semihard_loss`).
    `num_anchors` A: only the first A rows are anchors (`[A]` terms); the others are references
    (a cross-batch memory, `tfsim.losses.memory`)."""
    distances.check_distance_metric(distance_metric)
    labels, embeddings, _ = _masks.prepare(labels, embeddings)
    pdist = distances.pairwise_distances(embeddings, distance_metric, num_anchors)
    _, positive, negative = _masks.label_masks(labels, num_anchors)
    num_neg = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1, keepdims=True)  # [B, 1]

    # Each anchor's negative distances in ascending order, non-negatives pushed past
    # the end with a finite sentinel larger than any distance in the batch.
    sentinel = tf.stop_gradient(tf.reduce_max(pdist)) + 1.0
    neg_dist = tf.where(negative, pdist, sentinel)
    order = tf.argsort(neg_dist, axis=1, stable=True)
    sorted_neg = tf.gather(neg_dist, order, batch_dims=1)
    # First negative strictly farther than d(a, p): its rank among a's negatives.
    rank = tf.searchsorted(tf.stop_gradient(sorted_neg), tf.stop_gradient(pdist), side="right",
                           out_type=tf.int32)
    has_semihard = rank < num_neg
    semihard = tf.gather(sorted_neg, tf.minimum(rank, tf.shape(pdist)[1] - 1), batch_dims=1)
    hardest_fallback = _masks.masked_max(pdist, negative)[:, None]
    neg_choice = tf.where(has_semihard, semihard, hardest_fallback)

    hinge = tf.maximum(pdist - neg_choice + margin, 0.0)
    pos = tf.cast(positive, hinge.dtype)
    return tf.reduce_sum(hinge * pos, axis=1), tf.reduce_sum(pos)


def triplet_semihard_loss(labels, embeddings, margin: float = 1.0,
                          distance_metric: distances.DistanceMetric = "L2") -> tf.Tensor:
    """Semi-hard triplet loss of a batch (tensorflow-addons semantics).

    Args:
        labels: int tensor `[B]` (or `[B, 1]`) of class ids.
        embeddings: float tensor `[B, D]`; need not be normalised. fp16/bf16 are
            computed in fp32 and the result cast back.
        margin: the margin of the hinge.
        distance_metric: `"L2"`, `"squared-L2"`, `"angular"` or a callable
            returning the `[B, B]` distance matrix (see `tfsim.distances`).

    Returns:
        Scalar loss; 0 when the batch holds no positive pair.

    Example:
        >>> loss = triplet_semihard_loss([0, 0, 1, 1], tf.random.normal([4, 8]))

    Reference: arXiv:1503.03832.
    """
    return _masks.reduce_terms(semihard_terms(labels, embeddings, margin, distance_metric),
                               tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class TripletSemiHardLoss(MetricLoss):
    """Keras loss class of `triplet_semihard_loss` (same name and arguments as tfa 0.23).

    Args:
        margin: the margin of the hinge (default 1.0).
        distance_metric: `"L2"` (default), `"squared-L2"`, `"angular"` or a callable.
        cross_replica: under MirroredStrategy, mine against the global batch (see `base`).
        name: the loss name.

    Example:
        >>> model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.2))
    """

    terms = staticmethod(semihard_terms)
    _args = ("margin", "distance_metric")

    def __init__(self, margin: float = 1.0, distance_metric: distances.DistanceMetric = "L2",
                 cross_replica: bool = False, name: str = "triplet_semihard_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.margin = _masks.check_non_negative("margin", margin)
        self.distance_metric = distances.check_distance_metric(distance_metric)


def hard_terms(labels, embeddings, margin: float = 1.0, soft: bool = False,
               distance_metric: distances.DistanceMetric = "L2", num_anchors=None):
    """Per-anchor losses `[B]` and the batch size (see `triplet_hard_loss`); `num_anchors` as in
    `semihard_terms`."""
    distances.check_distance_metric(distance_metric)
    labels, embeddings, _ = _masks.prepare(labels, embeddings)
    pdist = distances.pairwise_distances(embeddings, distance_metric, num_anchors)
    _, positive, negative = _masks.label_masks(labels, num_anchors)
    gap = _masks.masked_max(pdist, positive) - _masks.masked_min(pdist, negative)
    per_anchor = tf.nn.softplus(gap) if soft else tf.maximum(gap + margin, 0.0)
    return per_anchor, tf.cast(tf.shape(per_anchor)[0], per_anchor.dtype)


def triplet_hard_loss(labels, embeddings, margin: float = 1.0, soft: bool = False,
                      distance_metric: distances.DistanceMetric = "L2") -> tf.Tensor:
    """Batch-hard triplet loss of a batch (tensorflow-addons 0.23 semantics).

    Per anchor a: the farthest positive d+ (a != p; with no positive, the row minimum
    of d(a, .), as in tfa) and the closest negative d- (with no negative, the row
    maximum); loss_a = max(d+ - d- + margin, 0), or softplus(d+ - d-) with `soft=True`
    (margin ignored; tfa's log1p(exp(.)) without its overflow to inf). Mean over anchors.

    Args:
        labels: int tensor `[B]` (or `[B, 1]`).
        embeddings: float tensor `[B, D]`; fp16/bf16 are computed in fp32.
        margin: the margin of the hinge.
        soft: use the soft-margin (softplus) form.
        distance_metric: `"L2"`, `"squared-L2"`, `"angular"` or a callable.

    Returns:
        Scalar loss.

    Example:
        >>> loss = triplet_hard_loss([0, 0, 1, 1], tf.random.normal([4, 8]), margin=0.2)

    Reference: Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017, arXiv:1703.07737.
    """
    return _masks.reduce_terms(hard_terms(labels, embeddings, margin, soft, distance_metric),
                               tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class TripletHardLoss(MetricLoss):
    """Keras loss class of `triplet_hard_loss` (same name and arguments as tfa 0.23).

    Args:
        margin: the margin of the hinge (default 1.0).
        soft: soft-margin form (default False).
        distance_metric: `"L2"` (default), `"squared-L2"`, `"angular"` or a callable.
        cross_replica: under MirroredStrategy, mine against the global batch (see `base`).
        name: the loss name.
    """

    terms = staticmethod(hard_terms)
    _args = ("margin", "soft", "distance_metric")

    def __init__(self, margin: float = 1.0, soft: bool = False,
                 distance_metric: distances.DistanceMetric = "L2", cross_replica: bool = False,
                 name: str = "triplet_hard_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.margin = _masks.check_non_negative("margin", margin)
        self.soft = bool(soft)
        self.distance_metric = distances.check_distance_metric(distance_metric)


_TRIPLET_DISTANCES = ("squared-L2", "L2")


def _check_triplet_distance(distance_metric: str) -> str:
    if distance_metric not in _TRIPLET_DISTANCES:
        raise ValueError(
            f"Invalid value for `distance_metric`: expected one of {list(_TRIPLET_DISTANCES)} for the explicit-"
            f"triplet loss. Received: distance_metric={distance_metric!r}")
    return distance_metric


def explicit_triplet_terms(labels, embeddings, margin: float = 1.0, distance_metric: str = "squared-L2"):
    """Hinges of explicit triplets, placed on each triplet's query row `[3T]`, and T.

    Rows are `(query, positive, negative)` triplets in order: 0-2, 3-5, ... The cost of a
    triplet sits on its query row (0 on the other two), so a contiguous slice of rows,
    a replica's share, holds the costs of exactly its own triplets.
    """
    del labels  # the sampler's row order says which rows are positives and negatives
    squared = _check_triplet_distance(distance_metric) == "squared-L2"
    embeddings = tf.convert_to_tensor(embeddings)
    if embeddings.shape[0] is not None and embeddings.shape[0] % 3:
        raise ValueError(
            "Invalid value for `embeddings`: expected (query, positive, negative) rows, a multiple of 3 "
            f"(use sampler.kind=triplets). Received: embeddings.shape[0]={embeddings.shape[0]}")
    _, embeddings, _ = _masks.prepare(tf.zeros([tf.shape(embeddings)[0]], tf.int32), embeddings)
    triplets = tf.reshape(embeddings, [-1, 3, tf.shape(embeddings)[1]])
    q, p, n = triplets[:, 0], triplets[:, 1], triplets[:, 2]
    gap = distances.rowwise_l2(q, p, squared) - distances.rowwise_l2(q, n, squared)
    hinge = tf.maximum(margin + gap, 0.0)
    per_row = tf.reshape(tf.stack([hinge, tf.zeros_like(hinge), tf.zeros_like(hinge)], axis=1), [-1])
    return per_row, tf.cast(tf.shape(hinge)[0], hinge.dtype)


def triplet_margin_loss(labels, embeddings, margin: float = 1.0, distance_metric: str = "squared-L2") -> tf.Tensor:
    """Triplet loss on explicit (query, positive, negative) triplets ("deep ranking").

    loss = mean over triplets of max(0, g + D(q, p) - D(q, n)), with g = `margin` the gap
    and D the paper's squared Euclidean distance (its Eq. 1), or the plain Euclidean
    distance with `distance_metric="L2"`. The triplets come from the sampler
    (`tfsim.data.samplers.triplet_batches`), not from mining.

    Args:
        labels: `[3T]` labels (unused: the row order defines the triplets).
        embeddings: float `[3T, D]`, rows `(q_0, p_0, n_0, q_1, p_1, n_1, ...)`; fp16/bf16 in fp32.
        margin: the gap g (default 1.0).
        distance_metric: "squared-L2" (default, the paper's) or "L2".

    Returns:
        Scalar loss; 0 for an empty batch.

    Raises:
        ValueError: if the number of rows is known and not a multiple of 3, or an unknown metric.

    Example:
        >>> loss = triplet_margin_loss(None, tf.random.normal([6, 8]))

    Reference: Wang et al., "Learning Fine-grained Image Similarity with Deep Ranking",
    CVPR 2014, arXiv:1404.4661.
    """
    return _masks.reduce_terms(explicit_triplet_terms(labels, embeddings, margin, distance_metric),
                               tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class TripletMarginLoss(MetricLoss):
    """Keras loss class of `triplet_margin_loss`; batches come from `sampler.kind=triplets`.

    Args:
        margin: the gap g (default 1.0).
        distance_metric: "squared-L2" (default, the paper's) or "L2".
        cross_replica: under MirroredStrategy, reduce over the global batch (see `base`);
            each replica's slice must hold whole triplets.
        name: the loss name.
    """

    input_kind = "triplets"
    terms = staticmethod(explicit_triplet_terms)
    _args = ("margin", "distance_metric")

    def __init__(self, margin: float = 1.0, distance_metric: str = "squared-L2", cross_replica: bool = False,
                 name: str = "triplet_margin_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.margin = _masks.check_non_negative("margin", margin)
        self.distance_metric = _check_triplet_distance(distance_metric)
