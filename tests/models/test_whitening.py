"""PCA whitening: against an SVD reference, its defining properties, the layer, and its effect."""

import numpy as np
import pytest

import keras

from tfsim.evaluation.metrics import retrieval_metrics
from tfsim.models.whitening import Whitening, fit_whitening, whiten, with_whitening


def _anisotropic(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.geomspace(5.0, 0.1, d)[:, None]
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d) * 3


def _reference(x, power, dims):
    """Independent route: SVD of the centred data (not the covariance's eigh), float64."""
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    eigenvalues = s ** 2 / (len(x) - 1)
    d = dims or x.shape[1]
    return mean, vt[:d].T * eigenvalues[:d] ** (-power / 2)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("dims", [0, 3])
def test_matches_svd_reference_up_to_axis_sign(power, dims):
    x = _anisotropic()
    mean, projection = fit_whitening(x, power=power, dims=dims)
    ref_mean, ref_projection = _reference(x, power, dims)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    assert projection.shape == ref_projection.shape
    signs = np.sign(np.sum(projection * ref_projection, axis=0))
    np.testing.assert_allclose(projection, ref_projection * signs, rtol=1e-4, atol=1e-6)


def test_full_whitening_gives_identity_covariance_on_the_fitted_data():
    x = _anisotropic()
    mean, projection = fit_whitening(x, power=1.0)
    y = (x - mean) @ projection.astype(np.float64)
    np.testing.assert_allclose(np.cov(y.T), np.eye(x.shape[1]), atol=1e-4)


def test_power_zero_is_a_rotation_that_keeps_distances():
    x = _anisotropic()
    mean, projection = fit_whitening(x, power=0.0)
    np.testing.assert_allclose(projection.T @ projection, np.eye(x.shape[1]), atol=1e-5)
    y = (x - mean) @ projection.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(y[:50] - y[50:100], axis=1),
                               np.linalg.norm(x[:50] - x[50:100], axis=1), rtol=1e-5)


def test_fit_is_deterministic_under_row_order_and_has_fixed_signs():
    x = _anisotropic()
    a = fit_whitening(x)
    b = fit_whitening(x[np.random.default_rng(1).permutation(len(x))])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-6)
    columns = a[1]
    assert np.all(columns[np.argmax(np.abs(columns), axis=0), np.arange(columns.shape[1])] > 0)


def test_rank_deficient_features_stay_finite():
    x = _anisotropic()
    x = np.concatenate([x, x[:, :2]], axis=1)  # 8 columns of rank 6
    mean, projection = fit_whitening(x, power=1.0)
    assert np.all(np.isfinite(projection))


@pytest.mark.parametrize("kwargs, match", [
    ({"features": np.zeros((1, 4))}, "at least 2 rows"),
    ({"features": np.full((5, 4), np.nan)}, "finite"),
    ({"features": np.ones((5, 4))}, "rows that vary"),  # zero covariance: no finite whitening
    ({"features": np.zeros((5, 4)), "power": 1.5}, "power"),
    ({"features": np.zeros((5, 4)), "dims": 5}, "dims"),
])
def test_bad_input_is_a_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_whitening(**kwargs)


def test_layer_matches_numpy_and_round_trips(tmp_path):
    x = _anisotropic(d=8).astype(np.float32)
    mean, projection = fit_whitening(x, dims=5)
    inputs = keras.Input((8,))
    layer = Whitening(8, 5)
    model = keras.Model(inputs, layer(inputs))
    layer.set_whitening(mean, projection)
    assert not model.trainable_weights
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, whiten(x, mean, projection), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    path = tmp_path / "w.keras"
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), got, atol=1e-6)
    with pytest.raises(ValueError, match="expected mean"):
        layer.set_whitening(mean[:3], projection)


def test_float16_input_computes_in_float32():
    x = _anisotropic(d=8).astype(np.float32)
    mean, projection = fit_whitening(x)
    layer = Whitening(8, 8)
    layer.build((None, 8))
    layer.set_whitening(mean, projection)
    out = layer(keras.ops.convert_to_tensor(x.astype(np.float16)))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(out), whiten(x, mean, projection), atol=2e-2)


def test_with_whitening_appends_the_layer_to_an_embedder():
    inputs = keras.Input((4, 4, 3), name="images")
    embedder = keras.Model(inputs, keras.layers.UnitNormalization()(
        keras.layers.Dense(6)(keras.layers.Flatten()(inputs))), name="embedder")
    images = np.random.default_rng(0).uniform(0, 255, (64, 4, 4, 3)).astype(np.float32)
    features = embedder.predict(images, verbose=0)
    mean, projection = fit_whitening(features, dims=4)
    final = with_whitening(embedder, mean, projection)
    np.testing.assert_allclose(final.predict(images, verbose=0), whiten(features, mean, projection), atol=1e-5)


def test_whitening_fitted_on_other_classes_repairs_a_dominated_cosine():
    """Two nuisance axes with large variance, shared by all classes, drown the class signal
    in a cosine. Whitening fitted on *training* classes only must bring the held-out
    classes' Recall@1 from near chance to high: the effect it is there for."""
    rng = np.random.default_rng(0)
    d, per_class = 12, 60

    def classes(ids):
        means = {c: np.concatenate([[0.0, 0.0], 0.5 * np.random.default_rng(100 + c).normal(size=d - 2)]) for c in ids}
        x = np.concatenate([means[c] + rng.normal(size=(per_class, d)) * ([20.0, 20.0] + [0.4] * (d - 2))
                            for c in ids])
        return x, np.repeat(ids, per_class)

    train_x, _ = classes(list(range(6)))
    test_x, test_y = classes(list(range(6, 10)))
    plain = retrieval_metrics(test_x.astype(np.float32), test_y, (1,), "cosine")["recall@1"]
    mean, projection = fit_whitening(train_x, power=1.0)
    whitened = retrieval_metrics(whiten(test_x, mean, projection), test_y, (1,), "cosine")["recall@1"]
    assert plain < 0.7 and whitened > 0.9, (plain, whitened)  # measured: 0.61 -> 0.96
