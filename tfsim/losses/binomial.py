"""Binomial deviance loss (Yi, Lei, Liao & Li, 2014).

On cosine similarities s of the L2-normalised embeddings, over ordered pairs i != j:

    loss = mean over positive pairs of log(1 + exp(-alpha (s_ij - beta)))
         + mean over negative pairs of log(1 + exp( alpha C (s_ij - beta)))

i.e. the paper's sum of W_ij * log(1 + exp(-alpha (s_ij - beta) M_ij)) with M = 1 for
positive and -C for negative pairs, and W normalising each kind to 1 over the batch.
Defaults alpha=2, beta=0.5, C=25 are the paper's.

Reference: Yi, Lei, Liao & Li, "Deep Metric Learning for Person Re-Identification",
ICPR 2014 (arXiv:1407.4979).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim import distances
from tfsim.losses import _masks
from tfsim.losses.base import MetricLoss


def binomial_deviance_terms(labels, embeddings, alpha: float = 2.0, beta: float = 0.5, cost: float = 25.0,
                            num_anchors=None):
    """Per-anchor terms `[B]` with the pair-count normalisers folded in, and Z = 1; `num_anchors`
    A: only the first A rows are anchors (the pairs are theirs with every row)."""
    labels, embeddings, _ = _masks.prepare(labels, embeddings)
    sim = distances.cosine_similarity_matrix(embeddings, num_anchors)
    _, positive, negative = _masks.label_masks(labels, num_anchors)
    return _masks.per_pair_type_means(tf.nn.softplus(-alpha * (sim - beta)),
                                      tf.nn.softplus(alpha * cost * (sim - beta)), positive, negative)


def binomial_deviance_loss(labels, embeddings, alpha: float = 2.0, beta: float = 0.5,
                           cost: float = 25.0) -> tf.Tensor:
    """Binomial deviance loss of a batch (see module doc).

    Args:
        labels: int tensor `[B]` (or `[B, 1]`).
        embeddings: float tensor `[B, D]` (normalised inside); fp16/bf16 computed in fp32.
        alpha: scale. beta: similarity threshold. cost: the negative-pair cost C.

    Returns:
        Scalar loss.

    Example:
        >>> loss = binomial_deviance_loss([0, 0, 1, 1], tf.random.normal([4, 8]))

    Reference: arXiv:1407.4979.
    """
    return _masks.reduce_terms(binomial_deviance_terms(labels, embeddings, alpha, beta, cost),
                               tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class BinomialDevianceLoss(MetricLoss):
    """Keras loss class of `binomial_deviance_loss` (defaults alpha=2, beta=0.5, cost=25)."""

    terms = staticmethod(binomial_deviance_terms)
    _args = ("alpha", "beta", "cost")

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, cost: float = 25.0, cross_replica: bool = False,
                 name: str = "binomial_deviance_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.alpha, self.cost = _masks.check_positive("alpha", alpha), _masks.check_positive("cost", cost)
        self.beta = float(beta)  # a similarity threshold: any value
