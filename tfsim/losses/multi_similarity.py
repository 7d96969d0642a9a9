"""Multi-Similarity loss with its pair mining (Wang et al., CVPR 2019).

On cosine similarities S of the L2-normalised embeddings, for each anchor i with
positives P_i and negatives N_i:

* mining: keep positive j if S_ij - epsilon < max_{k in N_i} S_ik (harder than the
  easiest-to-confuse negative), and negative k if S_ik + epsilon > min_{j in P_i} S_ij;
* loss_i = 1/alpha * log(1 + sum_{kept j} exp(-alpha (S_ij - base)))
         + 1/beta  * log(1 + sum_{kept k} exp( beta (S_ik - base)));
* an anchor contributes only if it has, before and after mining, at least one positive
  and one negative (as in the authors' code); loss = sum_i loss_i / B.

Defaults alpha=2, beta=50, epsilon=0.1 are the paper's. `base` (the paper's lambda)
defaults to 0.5, the value in the authors' released code that produced the published
results: with lambda=1 (the value printed in the paper), exp(50 (S - 1)) vanishes for
any negative with cosine below ~0.9, so negatives get almost no gradient until they are
nearly collapsed onto the anchor.

Reference: Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning", CVPR 2019, arXiv:1904.06627.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim import distances
from tfsim.losses import _masks
from tfsim.losses.base import MetricLoss

def _log1p_sum_exp(z: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Row-wise log(1 + sum_{mask} exp(z)), stable, 0 for an empty row."""
    return tf.nn.softplus(_masks.masked_logsumexp(z, mask))


def multi_similarity_terms(labels, embeddings, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                           epsilon: float = 0.1, num_anchors=None):
    """Per-anchor losses `[B]` and the batch size (see module doc); `num_anchors` A: only the
    first A rows are anchors, mined against every row."""
    labels, embeddings, _ = _masks.prepare(labels, embeddings)
    sim = distances.cosine_similarity_matrix(embeddings, num_anchors)
    _, positive, negative = _masks.label_masks(labels, num_anchors)
    hardest_neg = tf.reduce_max(tf.where(negative, sim, -2.0), axis=1, keepdims=True)
    easiest_pos = tf.reduce_min(tf.where(positive, sim, 2.0), axis=1, keepdims=True)
    keep_pos = positive & (sim - epsilon < hardest_neg)
    keep_neg = negative & (sim + epsilon > easiest_pos)
    valid = tf.reduce_any(keep_pos, axis=1) & tf.reduce_any(keep_neg, axis=1)
    pos_term = _log1p_sum_exp(-alpha * (sim - base), keep_pos) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - base), keep_neg) / beta
    per_anchor = tf.where(valid, pos_term + neg_term, 0.0)
    return per_anchor, tf.cast(tf.shape(per_anchor)[0], per_anchor.dtype)


def multi_similarity_loss(labels, embeddings, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                          epsilon: float = 0.1) -> tf.Tensor:
    """Multi-Similarity loss of a batch (see module doc).

    Args:
        labels: int tensor `[B]` (or `[B, 1]`).
        embeddings: float tensor `[B, D]` (normalised inside); fp16/bf16 computed in fp32.
        alpha: positive scale. beta: negative scale. base: similarity margin (lambda).
        epsilon: mining margin.

    Returns:
        Scalar loss; 0 when no anchor has both a mined positive and a mined negative.

    Example:
        >>> loss = multi_similarity_loss([0, 0, 1, 1], tf.random.normal([4, 8]))

    Reference: arXiv:1904.06627.
    """
    return _masks.reduce_terms(multi_similarity_terms(labels, embeddings, alpha, beta, base, epsilon),
                               tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class MultiSimilarityLoss(MetricLoss):
    """Keras loss class of `multi_similarity_loss`.

    Args:
        alpha, beta, base, epsilon: see `multi_similarity_loss` (defaults 2, 50, 0.5, 0.1).
        cross_replica: under MirroredStrategy, mine against the global batch (see `base`).
        name: the loss name.
    """

    terms = staticmethod(multi_similarity_terms)
    _args = ("alpha", "beta", "base", "epsilon")

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                 cross_replica: bool = False, name: str = "multi_similarity_loss", **kwargs):
        super().__init__(name=name, cross_replica=cross_replica, **kwargs)
        self.alpha = _masks.check_positive("alpha", alpha)
        self.beta, self.base, self.epsilon = float(beta), float(base), float(epsilon)
