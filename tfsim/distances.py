"""One object per distance, used by the losses, exact k-NN and the ScaNN index.

`DISTANCES` holds the four tfsim knows, by canonical name; each `Distance` says whether
larger means closer, whether vectors are L2-normalised first, and which ScaNN
`distance_measure` implements it, and computes

* `pairwise(x)`: the `[B, B]` matrix a loss mines, as a distance (larger = farther),
  with tensorflow-addons 0.23's exact definitions (the tfa-compatible losses depend on
  them): ``L2`` is the square root of the squared distance clipped at 0, where entries
  with squared distance <= 0 are exactly 0 *without* passing through sqrt(0) (finite
  gradient), diagonal 0; ``squared-L2`` the clipped squared distance, diagonal 0;
  ``cosine`` the angular distance 1 - cos clipped at 0, diagonal left as computed
  (1 - |f|^2, about 1e-7), as tfa's "angular";
* `score(queries, gallery)`: `[Q, G]` retrieval scores oriented so that larger is
  closer (distances negated), for evaluation and search.

Every squared Euclidean distance goes through one Gram-matrix function
(`squared_l2_between`). The losses' `distance_metric` argument keeps tfa's strings:
"L2", "squared-L2" and "angular" (tfa's name for the cosine distance; `LOSS_DISTANCES`
maps them to the distances), or a callable returning the `[B, B]` matrix.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import tensorflow as tf

DistanceFn = Callable[[tf.Tensor], tf.Tensor]
DistanceMetric = Union[str, DistanceFn]


def _off_diagonal_mask(n: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    return tf.ones([n, n], dtype) - tf.linalg.diag(tf.ones([n], dtype))


def squared_l2_between(a: tf.Tensor, b: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Squared Euclidean distances `[A, B]` between the rows of `a` and `b` (default: `a` itself),
    clipped at 0, through the Gram matrix."""
    a_sq = tf.reduce_sum(tf.square(a), axis=1, keepdims=True)
    # Within one batch the norms are computed once: the same graph (and float summation order
    # of the gradient) as the losses have always had, so seeded runs reproduce recorded numbers.
    b_sq = a_sq if b is None else tf.reduce_sum(tf.square(b), axis=1, keepdims=True)
    b = a if b is None else b
    return tf.maximum(a_sq + tf.transpose(b_sq) - 2.0 * tf.matmul(a, b, transpose_b=True), 0.0)


def squared_l2_matrix(embeddings: tf.Tensor) -> tf.Tensor:
    """Squared Euclidean distances `[B, B]` within a batch, clipped at 0."""
    return squared_l2_between(embeddings)


def _sqrt_with_finite_gradient(d2: tf.Tensor) -> tf.Tensor:
    # sqrt'(0) is infinite: shift exact zeros by a tiny constant before the sqrt, then mask
    # them back to 0 so neither value nor gradient is polluted.
    zero = tf.less_equal(d2, 0.0)
    return tf.sqrt(d2 + tf.cast(zero, d2.dtype) * 1e-16) * tf.cast(tf.logical_not(zero), d2.dtype)


def pairwise_l2(embeddings: tf.Tensor, squared: bool = False) -> tf.Tensor:
    """Pairwise (squared) Euclidean distances `[B, B]` with a finite gradient at 0, diagonal 0."""
    d2 = squared_l2_matrix(embeddings)
    dist = d2 * tf.cast(tf.greater(d2, 0.0), d2.dtype) if squared else _sqrt_with_finite_gradient(d2)
    return dist * _off_diagonal_mask(tf.shape(embeddings)[0], d2.dtype)


def rowwise_l2(a: tf.Tensor, b: tf.Tensor, squared: bool = False) -> tf.Tensor:
    """(Squared) Euclidean distances `[N]` between matching rows of `a` and `b` `[N, D]`.

    Like `pairwise_l2`, an exact zero distance gives 0 with a finite (zero) gradient.
    """
    d2 = tf.reduce_sum(tf.square(a - b), axis=-1)
    return d2 if squared else _sqrt_with_finite_gradient(d2)


def cosine_similarity_matrix(embeddings: tf.Tensor, num_anchors=None) -> tf.Tensor:
    """`[B, B]` cosine similarities of the rows (L2-normalised with tf.math.l2_normalize); with
    `num_anchors` A, those of the first A rows with all `[A, B]`."""
    normed = tf.math.l2_normalize(embeddings, axis=1)
    return tf.matmul(normed if num_anchors is None else normed[:num_anchors], normed, transpose_b=True)


@dataclasses.dataclass(frozen=True)
class Distance:
    """A distance or similarity (see module doc).

    Attributes:
        name: canonical name (a key of `DISTANCES`).
        larger_is_closer: True for similarities (dot, cosine), False for distances.
        normalize: whether vectors are L2-normalised before scoring.
        scann_measure: the ScaNN `distance_measure` that implements it.
    """

    name: str
    larger_is_closer: bool
    normalize: bool
    scann_measure: str

    def prepare(self, x: tf.Tensor) -> tf.Tensor:
        """The vectors to feed to `score` / the index (L2-normalised if the distance needs it)."""
        x = tf.convert_to_tensor(x, tf.float32)
        return tf.math.l2_normalize(x, axis=-1) if self.normalize else x

    def pairwise(self, embeddings: tf.Tensor) -> tf.Tensor:
        """The `[B, B]` distance matrix of a batch, larger = farther (tfa's definitions)."""
        if self.name == "L2":
            return pairwise_l2(embeddings, squared=False)
        if self.name == "squared-L2":
            return pairwise_l2(embeddings, squared=True)
        if self.name == "cosine":
            # tfa does not zero the diagonal here (it is 1 - |f|^2, ~1e-7): kept for exact parity.
            return tf.maximum(1.0 - cosine_similarity_matrix(embeddings), 0.0)
        raise ValueError(f"The {self.name!r} score is not a distance a loss can mine; use L2, squared-L2 or "
                         "angular (cosine).")

    def anchor_rows(self, embeddings: tf.Tensor, num_anchors) -> tf.Tensor:
        """The first `num_anchors` rows `[A, B]` of `pairwise(embeddings)`, computed as such (the
        anchors of a batch against the batch and a cross-batch memory)."""
        anchors = embeddings[:num_anchors]
        if self.name == "cosine":
            return tf.maximum(1.0 - cosine_similarity_matrix(embeddings, num_anchors), 0.0)
        if self.name not in ("L2", "squared-L2"):
            return self.pairwise(embeddings)  # (raises: not a distance)
        d2 = squared_l2_between(anchors, embeddings)
        squared = self.name == "squared-L2"
        dist = d2 * tf.cast(tf.greater(d2, 0.0), d2.dtype) if squared else _sqrt_with_finite_gradient(d2)
        return dist * (1.0 - tf.eye(num_anchors, tf.shape(embeddings)[0], dtype=d2.dtype))

    def score(self, queries: tf.Tensor, gallery: tf.Tensor) -> tf.Tensor:
        """`[Q, G]` scores, oriented so that larger is always closer (negated distances)."""
        q, g = self.prepare(queries), self.prepare(gallery)
        if self.larger_is_closer:
            return tf.matmul(q, g, transpose_b=True)
        d2 = squared_l2_between(q, g)
        return -d2 if self.name == "squared-L2" else -tf.sqrt(d2)


DISTANCES = {
    "cosine": Distance("cosine", larger_is_closer=True, normalize=True, scann_measure="dot_product"),
    "dot": Distance("dot", larger_is_closer=True, normalize=False, scann_measure="dot_product"),
    "squared-L2": Distance("squared-L2", larger_is_closer=False, normalize=False, scann_measure="squared_l2"),
    "L2": Distance("L2", larger_is_closer=False, normalize=False, scann_measure="squared_l2"),
}
# The losses' `distance_metric` strings (tensorflow-addons' vocabulary) and the distance each names.
LOSS_DISTANCES = {"L2": "L2", "squared-L2": "squared-L2", "angular": "cosine"}


def get_distance(name: str) -> Distance:
    """The `Distance` of a canonical name.

    Raises:
        ValueError: an unknown name, naming the known ones.
    """
    try:
        return DISTANCES[name]
    except KeyError:
        raise ValueError(f"Invalid value for `distance`: expected one of {sorted(DISTANCES)}. "
                         f"Received: distance={name!r}") from None


def check_distance_metric(metric: DistanceMetric) -> DistanceMetric:
    """Returns a loss's `distance_metric` if valid, else raises a ValueError naming the choices."""
    if callable(metric) or metric in LOSS_DISTANCES:
        return metric
    raise ValueError(
        f"Invalid value for `distance_metric`: expected one of {list(LOSS_DISTANCES)} or a "
        f"callable returning the [B, B] distance matrix. Received: distance_metric={metric!r}")


def pairwise_distances(embeddings: tf.Tensor, metric: DistanceMetric = "L2", num_anchors=None) -> tf.Tensor:
    """The `[B, B]` distance matrix of `embeddings` `[B, D]` under a loss's `distance_metric`;
    with `num_anchors` A, its first A rows `[A, B]` (a callable metric's matrix is sliced)."""
    check_distance_metric(metric)
    if callable(metric):
        return metric(embeddings) if num_anchors is None else metric(embeddings)[:num_anchors]
    distance = get_distance(LOSS_DISTANCES[metric])
    return distance.pairwise(embeddings) if num_anchors is None else distance.anchor_rows(embeddings, num_anchors)
