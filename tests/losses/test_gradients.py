"""Every registered loss's gradient against central finite differences, in float64.

Autodiff can be wrong where the value is right: a `tf.stop_gradient` around one term, a
custom gradient, a masked branch that cuts the path to some embeddings. Comparing the
tape's gradient with (f(x + h) - f(x - h)) / 2h coordinate by coordinate catches all of
them. The loss is the registered Keras class (`tfsim.losses.LOSSES`), built with
`dtype="float64"` so the whole computation runs in float64 and h = 1e-6 is exact enough.

Each loss gets arguments under which every one of its terms is active on these batches
(e.g. negatives inside the contrastive margin, negatives above binomial deviance's
threshold), so a term whose gradient is lost changes the result. For the proxy losses the
gradient is checked with respect to the embeddings and the proxies, through the cosine
similarities `CosineProxies` computes (in float64 here).
"""

import numpy as np
import pytest
import tensorflow as tf

from tfsim.losses import LOSSES, input_kind

B, D, C = 12, 3, 4  # D = 3: cosine similarities spread over [-1, 1], so every pair kind is active
H = 1e-6

# Arguments under which every term of the loss contributes on `batch(name)`.
ARGS = {
    "batch_all_triplet": {"margin": 0.5, "triplets": "all"},
    "binomial_deviance": {},  # defaults: about a quarter of the negatives lie above beta = 0.5 in 3-D
    "circle": {},
    "contrastive": {"pos_margin": 0.1, "neg_margin": 1.5},  # distances ~0.4-2.5: both hinges active
    "lifted_struct": {},
    "multi_similarity": {},
    "nca": {},
    "normalized_softmax": {"temperature": 0.5},
    "proxy_nca": {},
    "triplet_hard": {},
    "triplet_margin": {"margin": 2.0},
    "triplet_semihard": {},
}
NAMES = sorted(LOSSES)


def test_every_registered_loss_has_a_gradient_check():
    assert set(ARGS) == set(LOSSES), "add the new loss to ARGS (arguments that make all its terms active)"


def batch(name, seed):
    """Labels and the float64 tensors to differentiate: embeddings (and proxies for proxy losses)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(C), B // C)).astype(np.int32)  # several classes, K = 3
    if input_kind(name) == "triplets":  # rows q, p, n (the row order defines the triplets)
        labels = np.tile([0, 0, 1], B // 3).astype(np.int32)
    params = [rng.normal(size=(B, D))]
    if input_kind(name) == "proxy_similarities":
        params.append(rng.normal(size=(C, D)))
    return labels, params


def y_pred(name, params):
    """What the loss takes, from the parameters: embeddings, or their cosine similarities to the proxies."""
    if input_kind(name) != "proxy_similarities":
        return params[0]
    x, p = params
    return tf.matmul(tf.math.l2_normalize(x, axis=-1), tf.math.l2_normalize(p, axis=-1), transpose_b=True)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_central_differences(name, seed):
    loss = LOSSES[name](dtype="float64", **ARGS[name])
    labels, params = batch(name, seed)
    variables = [tf.Variable(p, dtype=tf.float64) for p in params]
    with tf.GradientTape() as tape:
        value = loss(labels, y_pred(name, variables))
    assert value.dtype == tf.float64
    grads = tape.gradient(value, variables)
    evaluate = tf.function(lambda *ps: loss(labels, y_pred(name, list(ps))))  # traced once: fast repeated calls
    for which, (param, grad) in enumerate(zip(params, grads)):
        assert grad is not None, f"{name}: no gradient for parameter {which}"
        numeric = np.zeros_like(param)
        for index in np.ndindex(param.shape):
            up, down = [p.copy() for p in params], [p.copy() for p in params]
            up[which][index] += H
            down[which][index] -= H
            numeric[index] = (float(evaluate(*up)) - float(evaluate(*down))) / (2 * H)
        analytic = tf.convert_to_tensor(grad).numpy()
        assert analytic.shape == numeric.shape
        assert np.abs(numeric).max() > 1e-3, f"{name}: the loss hardly depends on parameter {which}"
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7 * np.abs(numeric).max(),
                                   err_msg=f"{name}: autodiff vs central differences, parameter {which}")

