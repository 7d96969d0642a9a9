"""Generate golden values of the tensorflow-addons 0.23 metric-learning losses.

What it makes
-------------
Two files next to this script:

* ``tfa_0_23_golden.npz`` (``np.savez_compressed``), with, for every case ``i``:

  - ``case{i}_embeddings``: float32 ``[B, D]`` input embeddings (``y_pred``)
  - ``case{i}_labels``: int32 ``[B]`` integer labels (``y_true``)
  - ``case{i}_loss``: float64 scalar, the tfa loss value (computed by tfa in
    float32, stored as float64; NaN where tfa returns NaN), from a plain
    Keras-style call outside any GradientTape
  - ``case{i}_grad``: float32 ``[B, D]``, gradient of the loss value w.r.t.
    the embeddings (same call under ``tf.GradientTape``; may contain NaN)

* ``tfa_0_23_golden.json``: human-readable index with, for each case, ``id``,
  ``loss`` (``TripletSemiHardLoss`` | ``TripletHardLoss`` | ``LiftedStructLoss``),
  ``kwargs`` (exact constructor kwargs), ``labels_pattern`` (``pxk`` | ``random``
  | ``all_distinct`` | ``all_same``), ``B``, ``D``, ``embedding_scale``
  (``normalized`` | ``raw``), ``loss_value`` (float, or null if NaN) and
  ``grad_has_nan``.

The loss is called the way Keras does (``tfa.losses.X(**kwargs)(labels,
embeddings)``); the functional form (``tfa.losses.triplet_semihard_loss`` etc.)
is also evaluated and must agree (to 1e-6 relative; the taped and functional
values can differ from the recorded one by ~1 float32 ulp). Labels patterns:
``pxk`` = P classes x K=4 images, label-contiguous; ``random`` = uniform in ``range(B // 3)``;
``all_distinct`` = ``arange(B)`` (no positive pair); ``all_same`` = zeros (no
negative). Embeddings: ``normalized`` = standard normal rows L2-normalised;
``raw`` = standard normal * 2. Everything derives from
``np.random.default_rng(SEED)``; TF runs single-threaded with oneDNN disabled.

Environment
-----------
tensorflow-addons cannot be imported on the TF used by tfsim, so this must be
run in a separate venv with ``tensorflow-cpu==2.15.1 tensorflow-addons==0.23.0
numpy<2`` (Python 3.11)::

    python3.11 -m venv /work/tfa_venv
    /work/tfa_venv/bin/pip install tensorflow-cpu==2.15.1 tensorflow-addons==0.23.0 "numpy<2"

Exact command (from the repository root)::

    /work/tfa_venv/bin/python tests/losses/golden/make_tfa_golden.py
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # reproducible float results
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_addons as tfa  # noqa: E402

SEED = 20240523
K_PER_CLASS = 4
OUT_DIR = os.path.dirname(os.path.abspath(__file__))
NPZ_PATH = os.path.join(OUT_DIR, "tfa_0_23_golden.npz")
JSON_PATH = os.path.join(OUT_DIR, "tfa_0_23_golden.json")

LOSS_CLASSES = {
    "TripletSemiHardLoss": tfa.losses.TripletSemiHardLoss,
    "TripletHardLoss": tfa.losses.TripletHardLoss,
    "LiftedStructLoss": tfa.losses.LiftedStructLoss,
}
LOSS_FUNCTIONS = {
    "TripletSemiHardLoss": tfa.losses.triplet_semihard_loss,
    "TripletHardLoss": tfa.losses.triplet_hard_loss,
    "LiftedStructLoss": tfa.losses.lifted_struct_loss,
}
METRICS = ("L2", "squared-L2", "angular")


def case_specs():
    """The ordered list of (loss, kwargs, labels_pattern, B, D, embedding_scale)."""
    specs = []
    # --- TripletSemiHardLoss -------------------------------------------------
    for margin in (0.5, 1.0, 2.0):
        for metric in METRICS:
            for pattern in ("pxk", "random"):
                specs.append(
                    ("TripletSemiHardLoss",
                     {"margin": margin, "distance_metric": metric},
                     pattern, 12, 4, "normalized"))
    for metric in METRICS:
        for pattern in ("pxk", "random"):
            specs.append(("TripletSemiHardLoss",
                          {"margin": 1.0, "distance_metric": metric},
                          pattern, 32, 8, "normalized"))
    for metric in METRICS:
        for pattern in ("pxk", "random"):
            specs.append(("TripletSemiHardLoss",
                          {"margin": 1.0, "distance_metric": metric},
                          pattern, 12, 4, "raw"))
    specs.append(("TripletSemiHardLoss",
                  {"margin": 0.5, "distance_metric": "L2"}, "pxk", 32, 8, "raw"))
    # --- TripletHardLoss -----------------------------------------------------
    for margin in (0.5, 1.0):
        for soft in (False, True):
            for metric in METRICS:
                for pattern in ("pxk", "random"):
                    specs.append(
                        ("TripletHardLoss",
                         {"margin": margin, "soft": soft, "distance_metric": metric},
                         pattern, 12, 4, "normalized"))
    for soft in (False, True):
        for j, metric in enumerate(METRICS):
            pattern = ("pxk", "random")[(j + int(soft)) % 2]
            specs.append(("TripletHardLoss",
                          {"margin": 1.0, "soft": soft, "distance_metric": metric},
                          pattern, 32, 8, "normalized"))
    for soft in (False, True):
        for metric in METRICS:
            specs.append(("TripletHardLoss",
                          {"margin": 1.0, "soft": soft, "distance_metric": metric},
                          "random", 12, 4, "raw"))
    # --- LiftedStructLoss ----------------------------------------------------
    for margin in (0.5, 1.0, 2.0):
        for pattern in ("pxk", "random"):
            for scale in ("raw", "normalized"):
                specs.append(("LiftedStructLoss", {"margin": margin},
                              pattern, 12, 4, scale))
    for pattern in ("pxk", "random"):
        for scale in ("raw", "normalized"):
            specs.append(("LiftedStructLoss", {"margin": 1.0},
                          pattern, 32, 8, scale))
    # --- Degenerate label sets (default kwargs) ------------------------------
    for loss in ("TripletSemiHardLoss", "TripletHardLoss", "LiftedStructLoss"):
        for pattern in ("all_distinct", "all_same"):
            specs.append((loss, {}, pattern, 12, 4, "normalized"))
    # Degenerate + angular (non-zero diagonal of the angular distance matters).
    for loss in ("TripletSemiHardLoss", "TripletHardLoss"):
        for pattern in ("all_distinct", "all_same"):
            specs.append((loss, {"distance_metric": "angular"},
                          pattern, 12, 4, "normalized"))
    return specs


def make_labels(rng, pattern, batch):
    if pattern == "pxk":
        assert batch % K_PER_CLASS == 0
        labels = np.repeat(np.arange(batch // K_PER_CLASS), K_PER_CLASS)
    elif pattern == "random":
        labels = rng.integers(0, batch // 3, size=batch)
    elif pattern == "all_distinct":
        labels = np.arange(batch)
    elif pattern == "all_same":
        labels = np.zeros(batch)
    else:
        raise ValueError(pattern)
    return labels.astype(np.int32)


def make_embeddings(rng, scale, batch, dim):
    x = rng.standard_normal((batch, dim))
    if scale == "normalized":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    elif scale == "raw":
        x = 2.0 * x
    else:
        raise ValueError(scale)
    return x.astype(np.float32)


def evaluate(loss_name, kwargs, labels, embeddings):
    """Return (value, grad, max |difference| between the three evaluations)."""
    labels_t = tf.constant(labels, dtype=tf.int32)
    emb_t = tf.constant(embeddings, dtype=tf.float32)
    loss_obj = LOSS_CLASSES[loss_name](**kwargs)
    # Recorded value: plain Keras-style call (y_true=labels, y_pred=embeddings).
    value = loss_obj(labels_t, emb_t).numpy()
    # Gradient: same call under a GradientTape (TF may reorder float ops in
    # the taped graph, so that value can differ from `value` by ~1 ulp).
    with tf.GradientTape() as tape:
        tape.watch(emb_t)
        taped_value = loss_obj(labels_t, emb_t)
    grad = tape.gradient(taped_value, emb_t)
    # Functional form must agree.
    fn_value = LOSS_FUNCTIONS[loss_name](labels_t, emb_t, **kwargs).numpy()

    assert value.shape == () and value.dtype == np.float32, (value.shape, value.dtype)
    max_diff = 0.0
    for other in (taped_value.numpy(), fn_value):
        assert np.array_equal(value, other, equal_nan=True) or np.allclose(
            value, other, rtol=1e-6, atol=1e-7
        ), (loss_name, kwargs, value, other)
        if not np.isnan(value):
            max_diff = max(max_diff, abs(float(value) - float(other)))
    grad = np.zeros_like(embeddings) if grad is None else grad.numpy()
    return np.float64(value), grad.astype(np.float32), max_diff


def main():
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(SEED)

    arrays = {}
    index = []
    max_diff = 0.0
    for i, (loss_name, kwargs, pattern, batch, dim, scale) in enumerate(case_specs()):
        labels = make_labels(rng, pattern, batch)
        embeddings = make_embeddings(rng, scale, batch, dim)
        value, grad, diff = evaluate(loss_name, kwargs, labels, embeddings)
        max_diff = max(max_diff, diff)
        arrays[f"case{i}_embeddings"] = embeddings
        arrays[f"case{i}_labels"] = labels
        arrays[f"case{i}_loss"] = np.array(value, dtype=np.float64)
        arrays[f"case{i}_grad"] = grad
        index.append({
            "id": i,
            "loss": loss_name,
            "kwargs": kwargs,
            "labels_pattern": pattern,
            "B": batch,
            "D": dim,
            "embedding_scale": scale,
            "loss_value": None if np.isnan(value) else float(value),
            "grad_has_nan": bool(np.isnan(grad).any()),
        })

    np.savez_compressed(NPZ_PATH, **arrays)
    meta = {
        "description": "Golden values of tensorflow-addons 0.23 metric losses; "
                       "arrays in tfa_0_23_golden.npz as case{id}_embeddings/"
                       "_labels/_loss/_grad. Generated by make_tfa_golden.py.",
        "command": "/work/tfa_venv/bin/python tests/losses/golden/make_tfa_golden.py",
        "seed": SEED,
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "tensorflow_addons": tfa.__version__,
        "numpy": np.__version__,
        "num_cases": len(index),
        "cases": index,
    }
    with open(JSON_PATH, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {len(index)} cases to {NPZ_PATH} and {JSON_PATH}")
    print(f"max |keras - (taped keras | functional)| over cases: {max_diff:.3g}")


if __name__ == "__main__":
    main()
