"""One definition of every distance and similarity tfsim uses.

Losses, evaluation and the ScaNN index all take their distances from here, so a
"cosine" in a config means the same thing at training, evaluation and search time.

Two families:

* **Pairwise distances for losses** (`pairwise_distances(embeddings, metric)`):
  the tensorflow-addons 0.23 definitions, kept exactly because the tfa-compatible
  losses are defined on them:

  - ``"L2"``: sqrt of the squared distance clipped at 0; entries whose squared
    distance is <= 0 are set to exactly 0 *without* passing through sqrt(0),
    so the gradient stays finite; the diagonal is 0.
  - ``"squared-L2"``: the clipped squared distance, diagonal 0.
  - ``"angular"``: 1 - cosine similarity of the L2-normalised rows, clipped at
    0; as in tfa the diagonal is left as computed (1 - |f|^2, about 1e-7).
  - a callable ``f(embeddings) -> [B, B]`` distance matrix.

* **Retrieval scores** (`Similarity`): how evaluation and the index rank a
  gallery. `SIMILARITIES["cosine"]` (dot product of L2-normalised vectors, larger
  is closer) is the default for L2-normalised embeddings, where it ranks exactly
  like L2. Each entry says whether larger means closer and which ScaNN
  `distance_measure` implements it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Union

import tensorflow as tf

DistanceFn = Callable[[tf.Tensor], tf.Tensor]
DistanceMetric = Union[str, DistanceFn]

LOSS_DISTANCES = ("L2", "squared-L2", "angular")


def _off_diagonal_mask(n: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    return tf.ones([n, n], dtype) - tf.linalg.diag(tf.ones([n], dtype))


def squared_l2_matrix(embeddings: tf.Tensor) -> tf.Tensor:
    """Squared Euclidean distances `[B, B]`, clipped at 0, via the Gram matrix."""
    sq_norms = tf.reduce_sum(tf.square(embeddings), axis=1, keepdims=True)
    d2 = sq_norms + tf.transpose(sq_norms) - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True)
    return tf.maximum(d2, 0.0)


def pairwise_l2(embeddings: tf.Tensor, squared: bool = False) -> tf.Tensor:
    """Pairwise (squared) Euclidean distances with a finite gradient at 0.

    Args:
        embeddings: float tensor `[B, D]`.
        squared: return squared distances.

    Returns:
        `[B, B]` tensor of the same dtype, zero on the diagonal.
    """
    d2 = squared_l2_matrix(embeddings)
    zero = tf.less_equal(d2, 0.0)
    if squared:
        dist = d2
    else:
        # sqrt'(0) is infinite: shift exact zeros by a tiny constant before the sqrt,
        # then mask them back to 0 so neither value nor gradient is polluted.
        dist = tf.sqrt(d2 + tf.cast(zero, d2.dtype) * 1e-16)
    dist = dist * tf.cast(tf.logical_not(zero), d2.dtype)
    return dist * _off_diagonal_mask(tf.shape(embeddings)[0], d2.dtype)


def rowwise_l2(a: tf.Tensor, b: tf.Tensor, squared: bool = False) -> tf.Tensor:
    """(Squared) Euclidean distances `[N]` between matching rows of `a` and `b` `[N, D]`.

    Like `pairwise_l2`, an exact zero distance gives 0 with a finite (zero) gradient.
    """
    d2 = tf.reduce_sum(tf.square(a - b), axis=-1)
    if squared:
        return d2
    zero = tf.less_equal(d2, 0.0)
    return tf.sqrt(d2 + tf.cast(zero, d2.dtype) * 1e-16) * tf.cast(tf.logical_not(zero), d2.dtype)


def cosine_similarity_matrix(embeddings: tf.Tensor) -> tf.Tensor:
    """`[B, B]` cosine similarities of the rows (L2-normalised with tf.math.l2_normalize)."""
    normed = tf.math.l2_normalize(embeddings, axis=1)
    return tf.matmul(normed, normed, transpose_b=True)


def pairwise_angular(embeddings: tf.Tensor) -> tf.Tensor:
    """Pairwise angular distance 1 - cos(x_i, x_j), clipped at 0 (diagonal ~0, not masked)."""
    # tfa does not zero the diagonal here (it is 1 - |f|^2, ~1e-7): kept for exact parity.
    return tf.maximum(1.0 - cosine_similarity_matrix(embeddings), 0.0)


def check_distance_metric(metric: DistanceMetric) -> DistanceMetric:
    """Returns `metric` if valid, else raises a ValueError naming the choices."""
    if callable(metric) or metric in LOSS_DISTANCES:
        return metric
    raise ValueError(
        f"Invalid value for `distance_metric`: expected one of {list(LOSS_DISTANCES)} or a "
        f"callable returning the [B, B] distance matrix. Received: distance_metric={metric!r}")


def pairwise_distances(embeddings: tf.Tensor, metric: DistanceMetric = "L2") -> tf.Tensor:
    """The `[B, B]` distance matrix of `embeddings` `[B, D]` under `metric` (see module doc)."""
    check_distance_metric(metric)
    if callable(metric):
        return metric(embeddings)
    if metric == "L2":
        return pairwise_l2(embeddings, squared=False)
    if metric == "squared-L2":
        return pairwise_l2(embeddings, squared=True)
    return pairwise_angular(embeddings)


@dataclasses.dataclass(frozen=True)
class Similarity:
    """A retrieval score: how evaluation and the index rank gallery items.

    Attributes:
        name: canonical name.
        larger_is_closer: True for similarities (dot, cosine), False for distances.
        scann_measure: the ScaNN `distance_measure` that implements it.
        normalize: whether vectors are L2-normalised before scoring.
    """

    name: str
    larger_is_closer: bool
    scann_measure: str
    normalize: bool

    def prepare(self, x: tf.Tensor) -> tf.Tensor:
        """Returns the vectors to feed to `score` / the index (normalised if needed)."""
        x = tf.convert_to_tensor(x, tf.float32)
        return tf.math.l2_normalize(x, axis=-1) if self.normalize else x

    def score(self, queries: tf.Tensor, gallery: tf.Tensor) -> tf.Tensor:
        """`[Q, G]` scores, oriented so that larger is always closer (negated distances)."""
        q, g = self.prepare(queries), self.prepare(gallery)
        if self.name in ("cosine", "dot"):
            return tf.matmul(q, g, transpose_b=True)
        qn = tf.reduce_sum(tf.square(q), axis=1, keepdims=True)
        gn = tf.reduce_sum(tf.square(g), axis=1, keepdims=True)
        d2 = tf.maximum(qn + tf.transpose(gn) - 2.0 * tf.matmul(q, g, transpose_b=True), 0.0)
        return -d2 if self.name == "squared-L2" else -tf.sqrt(d2)


SIMILARITIES = {
    "cosine": Similarity("cosine", True, "dot_product", normalize=True),
    "dot": Similarity("dot", True, "dot_product", normalize=False),
    "squared-L2": Similarity("squared-L2", False, "squared_l2", normalize=False),
    "L2": Similarity("L2", False, "squared_l2", normalize=False),
}


def get_similarity(name: str) -> Similarity:
    """Looks up a retrieval score by its canonical name."""
    try:
        return SIMILARITIES[name]
    except KeyError:
        raise ValueError(
            f"Invalid value for `similarity`: expected one of {sorted(SIMILARITIES)}. "
            f"Received: similarity={name!r}") from None
