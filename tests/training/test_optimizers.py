"""Optimisers and schedules against naive formulas; per-layer multipliers; frozen BatchNorm;
mixed precision training end to end."""

import math

import keras
import numpy as np
import pytest

from tfsim import config
from tfsim.errors import UserInputError
from tfsim.training.optimizers import InverseSqrtDecay, ScaledAdam, ScaledSGD, WarmUp, build_optimizer, learning_rate
from tfsim.training.task import freeze_batchnorm


def schedule_value(schedule, step: int) -> float:
    """The learning rate at `step` of a float or a schedule."""
    return float(schedule) if isinstance(schedule, (int, float)) else float(schedule(step))


def test_inverse_sqrt_schedule_matches_the_formula():
    schedule = InverseSqrtDecay(1e-3, 100)
    for step in (0, 49, 99, 100, 399, 10_000):
        n = step + 1
        assert schedule_value(schedule, step) == pytest.approx(1e-3 * min(n / 100, math.sqrt(100 / n)), rel=1e-5)
    assert schedule_value(schedule, 99) == pytest.approx(1e-3)  # the peak is the end of the warm-up
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert schedule_value(again, 399) == pytest.approx(schedule_value(schedule, 399))


def test_warm_up_then_cosine_matches_the_formula():
    train = config.load("default", ["train.warmup_steps=10", "train.epochs=1", "train.steps_per_epoch=110"]).train
    schedule = learning_rate(train, 110)
    assert isinstance(schedule, WarmUp)
    for step in range(0, 110, 7):
        want = 1e-3 * (step + 1) / 10 if step < 10 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert schedule_value(schedule, step) == pytest.approx(want, rel=1e-4, abs=1e-9), step
    constant = learning_rate(config.load("default", ["train.lr_schedule=constant"]).train, 100)
    assert constant == 1e-3  # no warm-up: a plain float
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert schedule_value(again, 60) == pytest.approx(schedule_value(schedule, 60))


def two_layer_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="backbone_dense")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="projection")(x))


@pytest.mark.parametrize("make", [lambda lr, m: ScaledSGD(lr, m, momentum=0.9),
                                  lambda lr, m: ScaledAdam(lr, m)])
def test_layer_multiplier_equals_a_separate_optimiser_at_the_scaled_rate(make):
    import tensorflow as tf
    scaled, reference = two_layer_model(), two_layer_model()
    opt = make(0.01, {"projection": 10.0})
    plain = {"backbone_dense": make(0.01, None), "projection": make(0.1, None)}
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.normal(size=(5, 3)).astype(np.float32)
        grads = []
        for model in (scaled, reference):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x) ** 2)
            grads.append(tape.gradient(loss, model.trainable_variables))
        opt.apply_gradients(zip(grads[0], scaled.trainable_variables))
        for name, optimizer in plain.items():
            pairs = [(g, v) for g, v in zip(grads[1], reference.trainable_variables) if name in v.path]
            optimizer.apply_gradients(pairs)
    assert len(scaled.trainable_variables) == len(reference.trainable_variables) > 0
    for a, b in zip(scaled.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_scaled_adam_is_adam_by_a_naive_float64_loop():
    """The fused update (TensorFlow's ResourceApplyAdam) against Adam written out in float64,
    with decoupled weight decay, a layer multiplier and AMSGrad (Keras's own update)."""
    import tensorflow as tf
    rng = np.random.default_rng(3)
    for amsgrad in (False, True):
        model = two_layer_model()
        opt = ScaledAdam(0.01, {"projection": 3.0}, weight_decay=0.01, amsgrad=amsgrad)
        weights = [v.numpy().astype(np.float64) for v in model.trainable_variables]
        m = [np.zeros_like(w) for w in weights]
        v = [np.zeros_like(w) for w in weights]
        v_hat = [np.zeros_like(w) for w in weights]
        b1, b2, eps = 0.9, 0.999, 1e-7
        for t in range(1, 5):
            x = rng.normal(size=(5, 3)).astype(np.float32)
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            for i, (g, var) in enumerate(zip(grads, model.trainable_variables)):
                lr = 0.01 * (3.0 if "projection" in var.path else 1.0)
                weights[i] -= weights[i] * 0.01 * 0.01  # Keras's decoupled decay: lr (unscaled) x wd x w
                g = g.numpy().astype(np.float64)
                m[i] += (g - m[i]) * (1 - b1)
                v[i] += (g * g - v[i]) * (1 - b2)
                v_hat[i] = np.maximum(v_hat[i], v[i])
                alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                weights[i] -= alpha * m[i] / (np.sqrt(v_hat[i] if amsgrad else v[i]) + eps)
        for w, var in zip(weights, model.trainable_variables):
            np.testing.assert_allclose(var.numpy(), w, rtol=1e-5, atol=1e-6)


def test_scaled_adam_traces_one_fused_op_per_variable_and_its_scalars_once():
    """Traced, the update is one ResourceApplyAdam per variable, and the scalars they share (beta
    powers, betas, epsilon) are made once per step, whatever the layer multipliers; the traced step
    matches the eager one."""
    import tensorflow as tf
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
    finals = []
    for traced in (False, True):
        model = two_layer_model()
        opt = ScaledAdam(0.01, {"projection": 3.0})
        opt.build(model.trainable_variables)

        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(x)))  # (no Pow of its own)
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

        if traced:
            fn = tf.function(step)
            ops = [op.type for op in fn.get_concrete_function(tf.TensorSpec([None, 3])).graph.get_operations()]
            assert ops.count("ResourceApplyAdam") == len(model.trainable_variables) == 4
            assert ops.count("Pow") == 2  # beta1^t and beta2^t, once (not once per variable)
            step = fn
        for x in xs:
            step(tf.constant(x))
        finals.append([v.numpy() for v in model.trainable_variables])
    for eager, traced in zip(*finals):
        np.testing.assert_allclose(traced, eager, rtol=1e-6, atol=1e-7)


def test_sgd_nesterov_first_step_and_config():
    opt = build_optimizer(config.load("default", ["train.optimizer=sgd", "train.weight_decay=1e-5",
                                                  "train.lr_schedule=constant"]).train, 100)
    assert isinstance(opt, ScaledSGD) and opt.nesterov and opt.momentum == 0.9 and opt.weight_decay == 1e-5
    model = two_layer_model()
    before = [v.numpy().copy() for v in model.trainable_variables]
    grads = [np.ones_like(b) for b in before]
    sgd = ScaledSGD(0.1, momentum=0.9)
    sgd.apply_gradients(zip(grads, model.trainable_variables))
    # Nesterov, from zero velocity: v = -lr g; w += momentum v - lr g = -(1 + momentum) lr g.
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - 1.9 * 0.1, rtol=1e-6)
    assert isinstance(build_optimizer(config.load("default").train, 100), ScaledAdam)


def test_invalid_optimiser_settings_are_refused():
    for sets, key in ((["train.lr_schedule=inverse_sqrt"], "train.warmup_steps"),
                      (["train.momentum=1.0"], "train.momentum"),
                      (["train.weight_decay=-1"], "train.weight_decay"),
                      (["train.head_lr_multiplier=0"], "train.head_lr_multiplier")):
        with pytest.raises(UserInputError, match=key):
            config.validate(config.load("default", sets))


@pytest.mark.slow  # over a second and a half: kept out of the fast tier
def test_frozen_batchnorm_keeps_its_statistics():
    from tfsim.models import build_embedding_model
    model = build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=0)
    frozen = freeze_batchnorm(model)
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert frozen == len(bns) > 0
    before = [w.numpy().copy() for layer in bns for w in layer.weights]
    model.compile(optimizer=ScaledAdam(0.1), loss=lambda y, p: keras.ops.sum(p ** 2))
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    model.fit(x, np.zeros(8), epochs=2, verbose=0)
    after = [w.numpy() for layer in bns for w in layer.weights]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(model.get_layer("projection").get_weights()[0], 0)


@pytest.mark.slow
# Each precision once, the bfloat16 run XLA-compiled: the claims are the same for every combination,
# and each combination is a whole training run.
@pytest.mark.parametrize("precision, jit", [("mixed_float16", False), ("mixed_bfloat16", True)])
def test_mixed_precision_run_trains_and_exports_float32(tmp_path, precision, jit, monkeypatch):
    from tfsim.runs import load_embedder
    from tfsim.training import train
    # The optimizer's slots exist before `fit` traces the step (made inside the trace, they would make
    # TensorFlow trace the step twice), here through the loss-scale wrapper of mixed precision.
    built_at_fit = []
    real_fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, **k: built_at_fit.append(self.optimizer.built)
                        or real_fit(self, *a, **k))
    cfg = config.load("default", ["train.epochs=1", "train.steps_per_epoch=3", "model.width=8",
                                  "model.embedding_dim=16", "eval.every_epoch=false", "eval.baselines=false",
                                  f"train.precision={precision}", f"train.jit_compile={str(jit).lower()}",
                                  f"export.root={tmp_path / 'exports'}"])
    result = train(cfg, tmp_path / "run", verbose=0)
    assert keras.config.dtype_policy().name == "float32"  # restored after training
    embedder = load_embedder(next((tmp_path / "run" / "checkpoints").glob("*.keras")))
    assert embedder.get_layer("projection").dtype_policy.name == precision
    out = embedder(np.zeros((2, 28, 28, 3), np.float32))
    assert out.dtype == "float32" and np.allclose(np.linalg.norm(np.asarray(out), axis=1), 1, atol=1e-3)
    assert 0.3 < result.metrics["recall@1"] <= 1 and np.isfinite(result.metrics["map@r"])
    assert built_at_fit == [True]


@pytest.mark.slow
def test_select_best_keeps_the_best_validation_epoch_and_stops_early(tmp_path, monkeypatch):
    import json

    from tfsim.runs import load_embedder
    from tfsim.training import callbacks, train
    # Validation scores scripted by epoch: best at epoch 2, then no better for 2 epochs -> stop at 4.
    scripted = iter([0.30, 0.50, 0.45, 0.50, 0.90, 0.90])
    original = callbacks.RetrievalEvaluation.on_epoch_end

    def scored(self, epoch, logs=None):
        original(self, epoch, logs)
        self.history[-1]["map@r"] = next(scripted)
    monkeypatch.setattr(callbacks.RetrievalEvaluation, "on_epoch_end", scored)
    sets = ["train.epochs=6", "train.steps_per_epoch=2", "model.width=8", "model.embedding_dim=16",
            "eval.baselines=false", "export.enabled=false", "whitening.enabled=false", "train.select_best=true",
            "train.patience=2", "sampler.classes_per_batch=4"]
    seen = {}
    from tfsim.training import run as train_module
    real_fit = train_module.fit

    def spy(cfg, run_dir, split, **kw):
        seen["train"], seen["val"] = set(np.unique(split.train.labels)), set(np.unique(split.test.labels))
        seen["names"] = split.dataset.class_names
        return real_fit(cfg, run_dir, split, **kw)
    monkeypatch.setattr(train_module, "fit", spy)
    result = train(config.load("default", sets), tmp_path / "run", verbose=0)
    sel = result.metrics["selected"]
    assert sel["epoch"] == 2 and sel["stopped_early"] == 4 and sel["epochs_trained"] == 4
    assert sel["values"] == [0.30, 0.50, 0.45, 0.50]  # the tie at epoch 4 keeps epoch 2
    # Validation classes come from the training classes; the test classes are never seen.
    test = {seen["names"].index(c) for c in result.test_classes}
    assert len(seen["val"]) == 2 and not seen["val"] & seen["train"] and not (seen["val"] | seen["train"]) & test
    assert sorted(sel["validation_classes"]) == sorted(seen["names"][c] for c in seen["val"])
    state = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())
    assert state["epoch"] == 2 and state["stopped_early"] == 4
    # The stages used the best epoch's model, and a re-run neither trains nor changes the choice.
    best = load_embedder(tmp_path / "run" / "checkpoints" / "best.keras")
    last = load_embedder(next((tmp_path / "run" / "checkpoints").glob("epoch-*.keras")))
    assert not np.allclose(best.get_layer("projection").get_weights()[0], last.get_layer("projection").get_weights()[0])
    again = train(config.load("default", sets), tmp_path / "run", verbose=0)
    assert again.fit_seconds == 0 and again.metrics["selected"]["epoch"] == 2
    assert again.metrics["recall@1"] == result.metrics["recall@1"]
    with pytest.raises(UserInputError, match="train.patience"):
        config.validate(config.load("default", ["train.patience=3"]))


def test_best_checkpoint_state_resumes_from_the_recorded_epochs(tmp_path):
    from types import SimpleNamespace

    from tfsim.runs import read_best
    from tfsim.training.callbacks import BestCheckpoint
    model = two_layer_model()
    evaluation = SimpleNamespace(history=[])

    def run(callback, epoch, value):
        evaluation.history.append({"map@r": value})
        callback.on_epoch_end(epoch)

    first = BestCheckpoint(tmp_path, evaluation, patience=3)
    first.set_model(model)
    for epoch, value in enumerate([0.2, 0.6, 0.4]):
        run(first, epoch, value)
    assert read_best(tmp_path)["epoch"] == 2 and (tmp_path / "best.keras").is_file()
    # Killed after epoch 3 was recorded but resumed from the epoch-1 checkpoint: epochs 2-3 replay.
    resumed = BestCheckpoint(tmp_path, evaluation, patience=3, initial_epoch=1)
    resumed.set_model(model)
    assert [v["epoch"] for v in resumed.values] == [1]
    for epoch, value in [(1, 0.6), (2, 0.4), (3, 0.5), (4, 0.55)]:
        run(resumed, epoch, value)
    state = read_best(tmp_path)
    assert state["epoch"] == 2 and [v["epoch"] for v in state["values"]] == [1, 2, 3, 4, 5]
    assert state["stopped_early"] == 5 and model.stop_training
