"""PCA whitening of embeddings, learned from the training classes after training.

Image-retrieval pipelines end with a linear map fitted on training descriptors (Jégou &
Chum, "Negative evidences and co-occurences in image retrieval: the benefit of PCA and
whitening", ECCV 2012; Radenović, Tolias & Chum, "Fine-tuning CNN Image Retrieval with No
Human Annotation", TPAMI 2018). Metric losses leave a few directions of the embedding with
most of the variance of the training classes; on classes never seen, those directions
drown the others in a cosine. Whitening rebalances them:

    y = normalize((x - mean) @ U[:, :d] @ diag(max(lambda[:d], eps * lambda[0]) ** (-power / 2)))

where `mean` is the mean training embedding and `U`, `lambda` the eigenvectors and
eigenvalues of the training embeddings' covariance, in decreasing order.

* `power=0`: PCA only (centre and rotate; with `d = D` cosine ranks as after centring).
* `power=1`: full whitening (unit variance along every kept axis on the training set).
* `power=0.5` (default): square-root whitening, Jégou & Chum's partial power, which keeps
  some of the weight of the dominant axes. On the shipped data it gave the best held-out
  Recall@1 of {0.25, 0.5, 1} on two seeds.

`eps` is a floor on the eigenvalues relative to the largest one, so axes with (almost) no
training variance are not blown up by the inverse power.

Data flow (`tfsim.training.train`): after `fit`, embed the training images (no augmentation,
at most `whitening.max_images` of them), `fit_whitening` in float64 NumPy, and append a
`Whitening` layer to the embedder (`with_whitening`). That model is what is exported and
indexed; its weights are constants (not trainable). Evaluation applies the layer's own ops to
the embedder's embeddings (`apply_whitening`): one network pass gives the whitened and the
unwhitened metrics.

Example:
    >>> mean, projection = fit_whitening(train_embeddings, power=0.5)
    >>> final = with_whitening(embedder, mean, projection)
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

WHITENING_LAYER = "whitening"


def fit_whitening(features: np.ndarray, power: float = 0.5, dims: Optional[int] = None,
                  eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Fits PCA whitening on `features` (see module doc).

    Args:
        features: `[N, D]` training embeddings (or any feature vectors), N >= 2.
        power: exponent in [0, 1] applied to the eigenvalues as `lambda ** (-power / 2)`.
        dims: number of principal axes kept (None or 0: all D).
        eps: eigenvalue floor, relative to the largest eigenvalue.

    Returns:
        `(mean [D], projection [D, dims])`, float32.

    Raises:
        ValueError: on fewer than 2 rows, non-finite values, identical rows (no variance), a
            power outside [0, 1] or dims outside 1..D.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("Invalid value for `features`: expected a 2-D array with at least 2 rows (one feature "
                         f"vector per training image). Received: shape={x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("Invalid value for `features`: expected finite values; the embeddings contain NaN or "
                         "inf (did training diverge?).")
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"Invalid value for `power`: expected a number in [0, 1]. Received: power={power!r}")
    d = x.shape[1] if not dims else int(dims)
    if not 1 <= d <= x.shape[1]:
        raise ValueError(f"Invalid value for `dims`: expected 1..{x.shape[1]} (the feature dimension) or 0 for "
                         f"all. Received: dims={dims!r}")
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
    if not eigenvalues.max() > 0:  # else the floor is 0 and the projection infinite
        raise ValueError("Invalid value for `features`: expected rows that vary (there is no axis to whiten "
                         "otherwise; did the embedder collapse to a constant?). Received: "
                         f"{x.shape[0]} identical rows")
    order = np.argsort(eigenvalues)[::-1][:d]
    eigenvalues = np.maximum(eigenvalues[order], eps * float(eigenvalues.max()))
    eigenvectors = eigenvectors[:, order]
    # Eigenvectors are defined up to sign: fix it (largest |component| positive) so that
    # refitting the same data gives the same projection.
    signs = np.sign(eigenvectors[np.argmax(np.abs(eigenvectors), axis=0), np.arange(d)])
    eigenvectors = eigenvectors * np.where(signs == 0, 1.0, signs)
    projection = eigenvectors * eigenvalues ** (-power / 2.0)
    return mean.astype(np.float32), projection.astype(np.float32)


@keras.saving.register_keras_serializable(package="tfsim")
class Whitening(keras.layers.Layer):
    """`normalize((x - mean) @ projection)`: a fitted whitening as a frozen layer.

    Args:
        dim: input dimension D.
        output_dim: output dimension d (columns of the projection).

    The weights are not trainable; set them with `set_whitening(mean, projection)`.
    Computes in float32 (also under mixed precision); output float32 `[B, d]`, unit norm.
    """

    def __init__(self, dim: int, output_dim: int, name: str = WHITENING_LAYER, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.pop("trainable", None)  # (in a saved config) always frozen
        super().__init__(name=name, trainable=False, **kwargs)
        self.dim, self.output_dim = int(dim), int(output_dim)
        self.mean = self.add_weight(name="mean", shape=(self.dim,), initializer="zeros", trainable=False,
                                    dtype="float32")
        self.projection = self.add_weight(name="projection", shape=(self.dim, self.output_dim),
                                          initializer="identity" if self.dim == self.output_dim else "zeros",
                                          trainable=False, dtype="float32")

    def set_whitening(self, mean: np.ndarray, projection: np.ndarray) -> None:
        mean, projection = np.asarray(mean, np.float32), np.asarray(projection, np.float32)
        if mean.shape != (self.dim,) or projection.shape != (self.dim, self.output_dim):
            raise ValueError(f"Invalid whitening: expected mean [{self.dim}] and projection [{self.dim}, "
                             f"{self.output_dim}]. Received: {mean.shape} and {projection.shape}")
        self.mean.assign(mean)
        self.projection.assign(projection)

    def call(self, x):
        return _whiten_tensor(x, self.mean, self.projection)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, output_dim=self.output_dim)
        return config


def with_whitening(embedder: keras.Model, mean: np.ndarray, projection: np.ndarray) -> keras.Model:
    """`images -> embedder -> Whitening`: the model that is evaluated, exported and indexed.

    Returns a functional model named "embedder" whose output layer is the whitening (outputs
    are L2-normalised, like the embedder's).
    """
    layer = Whitening(int(projection.shape[0]), int(projection.shape[1]))
    inputs = keras.Input(embedder.input_shape[1:], name="images")
    outputs = layer(embedder(inputs))
    layer.set_whitening(mean, projection)
    return keras.Model(inputs, outputs, name="embedder")


def _whiten_tensor(x, mean, projection) -> tf.Tensor:
    """The layer's computation, in float32 (one definition for the layer and `apply_whitening`)."""
    return tf.math.l2_normalize(tf.matmul(tf.cast(x, tf.float32) - mean, projection), axis=-1)


def apply_whitening(embeddings: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """`[N, D]` embeddings -> `[N, d]` float32: what `with_whitening(embedder, mean, projection)`
    outputs for images the embedder maps to `embeddings` (the `Whitening` layer's own ops), without
    building and running that model.
    """
    return _whiten_tensor(tf.convert_to_tensor(embeddings), tf.constant(mean, tf.float32),
                          tf.constant(projection, tf.float32)).numpy()


def whiten(features: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """NumPy version of the layer, for feature sets that are not model outputs (raw pixels)."""
    return normalize_rows((np.asarray(features, np.float64) - mean) @ projection.astype(np.float64))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), float32."""
    x = np.asarray(x, np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
