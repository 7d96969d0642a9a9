"""`apply_whitening`: the Whitening layer's output, computed from the embedder's embeddings."""

import keras
import numpy as np

from tfsim.models.whitening import apply_whitening, fit_whitening, with_whitening


def test_apply_whitening_equals_the_whitened_model():
    rng = np.random.default_rng(0)
    embedder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    x = rng.normal(size=(40, 6)).astype(np.float32)
    features = np.asarray(embedder(x))
    mean, projection = fit_whitening(features, power=0.5, dims=3)
    whitened = apply_whitening(features, mean, projection)
    assert whitened.dtype == np.float32 and whitened.shape == (40, 3)
    np.testing.assert_allclose(whitened, np.asarray(with_whitening(embedder, mean, projection)(x)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(whitened, axis=1), 1.0, atol=1e-5)
