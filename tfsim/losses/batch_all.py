"""Triplet loss over every mined triplet of the batch, with pytorch-metric-learning's semantics.

`batch_all_triplet_loss` is what a pytorch-metric-learning (PML 2.9) user writes as
`TripletMarginLoss(margin)` applied to the triplets of
`TripletMarginMiner(margin, type_of_triplets=triplets)`, both with PML's default
`LpDistance` (embeddings L2-normalised, Euclidean distance):

* every triplet (a, p, n) of the batch with y_a == y_p, a != p, y_n != y_a is a candidate;
  with d the Euclidean distance of the normalised embeddings and t = d(a,n) - d(a,p):
  - "semihard" keeps 0 < t <= margin (the negative is farther than the positive, but
    within the margin),
  - "hard" keeps t <= 0, "all" keeps t <= margin, "easy" keeps t > margin (as PML);
* each kept triplet costs max(d(a,p) - d(a,n) + margin, 0), and the loss is the mean over
  the kept triplets whose cost is > 0 (PML's `AvgNonZeroReducer`); 0, with zero gradients,
  when there are none. The mining is not differentiated (PML mines under `no_grad`).

How this differs from tfa's `TripletSemiHardLoss` (also in tfsim, unchanged): tfa takes one
negative per positive pair, the closest one strictly farther than the positive with no
upper bound (or the farthest negative if none), and averages the hinge over *all* positive
pairs, zeros included. Here every semi-hard negative within the margin counts, and the mean
is over the triplets that still violate it, so the gradient does not fade as the batch
gets easier. On the bench (`bench/peer_parity.py`) this is the loss that matches PML.

Cost: the candidate triplets are a `[B, B, B]` tensor (B = 40: 64k entries; B = 256: 17M,
about 70 MB in float32).

Reference: Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
Re-Identification", 2017, arXiv:1703.07737 (batch-all with the mean over non-zero terms);
Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015, arXiv:1503.03832 (semi-hard
triplets); Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020,
arXiv:2003.08505 (PML).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim import distances
from tfsim.losses import _masks
from tfsim.losses.base import MetricLoss

TRIPLET_KINDS = ("semihard", "hard", "all", "easy")


def _check_triplets(triplets: str) -> str:
    if triplets not in TRIPLET_KINDS:
        raise ValueError(f"Invalid value for `triplets`: expected one of {list(TRIPLET_KINDS)}. "
                         f"Received: triplets={triplets!r}")
    return triplets


def batch_all_terms(labels, embeddings, margin: float = 0.2, triplets: str = "semihard", num_anchors=None):
    """Per-anchor sums of the kept triplets' costs `[B]` and the number of non-zero costs;
    `num_anchors` A: only the first A rows are anchors, positives and negatives come from all."""
    _check_triplets(triplets)
    labels, embeddings, _ = _masks.prepare(labels, embeddings)
    unit = tf.math.l2_normalize(embeddings, axis=1)
    pdist = distances.pairwise_distances(unit, "L2", num_anchors)
    _, positive, negative = _masks.label_masks(labels, num_anchors)
    ap = pdist[:, :, None]  # [a, p, 1]
    an = pdist[:, None, :]  # [a, 1, n]
    valid = positive[:, :, None] & negative[:, None, :]
    t = tf.stop_gradient(an - ap)
    if triplets == "easy":
        keep = t > margin
    else:
        keep = t <= margin
        if triplets == "hard":
            keep &= t <= 0
        elif triplets == "semihard":
            keep &= t > 0
    cost = tf.where(valid & keep, tf.maximum(ap - an + margin, 0.0), 0.0)
    nonzero = tf.reduce_sum(tf.cast(cost > 0, cost.dtype))
    return tf.reduce_sum(cost, axis=[1, 2]), nonzero


def batch_all_triplet_loss(labels, embeddings, margin: float = 0.2, triplets: str = "semihard") -> tf.Tensor:
    """Mean cost of the batch's mined triplets that violate the margin (PML semantics, module doc).

    Args:
        labels: int tensor `[B]` (or `[B, 1]`) of class ids.
        embeddings: float tensor `[B, D]`, L2-normalised inside; fp16/bf16 are computed in fp32.
        margin: the margin of the miner and of the hinge (PML's miner default, 0.2).
        triplets: which triplets are mined: "semihard" (default), "hard", "all" or "easy".

    Returns:
        Scalar loss; 0 when no mined triplet has a positive cost.

    Example:
        >>> loss = batch_all_triplet_loss([0, 0, 1, 1], tf.random.normal([4, 8]))

    Reference: arXiv:1703.07737, arXiv:1503.03832, arXiv:2003.08505.
    """
    return _masks.reduce_terms(batch_all_terms(labels, embeddings, margin, triplets),
                               tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class BatchAllTripletLoss(MetricLoss):
    """Keras loss class of `batch_all_triplet_loss` (PML's TripletMarginLoss + TripletMarginMiner).

    Args:
        margin: margin of the miner and the hinge (default 0.2).
        triplets: "semihard" (default), "hard", "all" or "easy".
        cross_replica: under MirroredStrategy, mine against the global batch (see `base`).
        name: the loss name.

    Example:
        >>> model.compile(optimizer="adam", loss=BatchAllTripletLoss(margin=0.2))
    """

    terms = staticmethod(batch_all_terms)
    _args = ("margin", "triplets")

    def __init__(self, margin: float = 0.2, triplets: str = "semihard", cross_replica: bool = False,
                 name: str = "batch_all_triplet_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.margin = _masks.check_non_negative("margin", margin)
        self.triplets = _check_triplets(triplets)
