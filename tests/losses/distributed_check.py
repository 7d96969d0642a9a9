"""Run as a script: one Keras `fit` step under MirroredStrategy on 2 logical CPUs vs one device.

Prints one JSON line: for each loss and cross_replica setting, the max abs difference
between the mirrored weight update and the single-device expectation:
* cross_replica=True: the gradient of the loss of the whole global batch;
* cross_replica=False: the gradient of the mean of the two replicas' half-batch losses.
Losses without a cross-replica mode (Keras's Circle, the per-sample proxy losses) are
checked with cross_replica=False only; for the proxy losses the mirrored update must
also equal the whole-batch gradient (a per-sample mean has no mining to split).
With a cross-batch memory (`MemoryTrainer`, every mining loss of embeddings): four steps
under MirroredStrategy (the memory wraps around at the second, the first is its warm-up)
against four one-device steps on the same global batches: the weights and the memories match.
Must run in a fresh process (logical devices are set before any TF op).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfsim.losses import LOSSES, MemoryTrainer, get_loss, input_kind, loss_arguments, supports_cross_replica  # noqa: E402
from tfsim.models.proxies import CosineProxies  # noqa: E402
from tfsim.training.optimizers import ScaledAdam  # noqa: E402

B, D_IN, D = 24, 6, 4
KIND = "embeddings"


def make_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D_IN,))
    x = keras.layers.Dense(8, activation="tanh")(inputs)
    x = keras.layers.UnitNormalization()(keras.layers.Dense(D)(x))
    if KIND == "proxy_similarities":
        x = CosineProxies(6)(x)
    return keras.Model(inputs, x)


def single_device_update(loss, x, y, halves: bool):
    model = make_model()
    with tf.GradientTape() as tape:
        if halves:
            h = B // 2
            value = (loss(y[:h], model(x[:h])) + loss(y[h:], model(x[h:]))) / 2
        else:
            value = loss(y, model(x))
    return [-g.numpy() for g in tape.gradient(value, model.trainable_variables)]


def make_loss(name, cross_replica):
    """The loss with margin 0.5 where it has a margin, and `cross_replica` where it has that mode."""
    kw = {"margin": 0.5} if "margin" in loss_arguments(name) else {}
    if supports_cross_replica(name):
        kw["cross_replica"] = cross_replica
    return get_loss(name, **kw)


def mirrored_update(strategy, name, cross_replica, x, y):
    with strategy.scope():
        model = make_model()
        before = [v.numpy().copy() for v in model.trainable_variables]
        model.compile(optimizer=keras.optimizers.SGD(1.0),
                      loss=make_loss(name, cross_replica))
    ds = tf.data.Dataset.from_tensors((x, y))
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return [v.numpy() - b for v, b in zip(model.trainable_variables, before)]


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, D_IN)).astype(np.float32)
    # P x K, label-contiguous: replica 0 holds classes 0-2, replica 1 classes 3-5.
    y = np.repeat(np.arange(6), 4).astype(np.int32)
    out = {}
    global KIND
    # One strategy for the whole process: a second MirroredStrategy reuses collective
    # instance keys, which TF's collective executor rejects.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for name in LOSSES:
        KIND = input_kind(name)  # triplets: rows q, p, n; each replica holds 4 whole triplets
        for cross in ((True, False) if supports_cross_replica(name) else (False,)):
            got = mirrored_update(strategy, name, cross, x, y)
            want = single_device_update(make_loss(name, False), x, y, halves=not cross)
            if KIND == "proxy_similarities":
                whole = single_device_update(get_loss(name), x, y, halves=False)
                want = [w if np.allclose(w, v, atol=1e-6) else w * np.nan for w, v in zip(want, whole)]
            scale = max(float(np.abs(w).max()) for w in want)
            out[f"{name}/cross_replica={cross}"] = {
                "max_abs_diff": max(float(np.abs(g - w).max()) for g, w in zip(got, want)),
                "update_scale": scale}
    # ScaledAdam under MirroredStrategy: one Adam step with a 10x proxy learning rate
    # matches the same step on one device, and the proxies move 10x as far as with 1x.
    KIND = "proxy_similarities"

    def adam_update(scope, multiplier):
        with scope:
            model = make_model()
            before = [v.numpy().copy() for v in model.trainable_variables]
            model.compile(optimizer=ScaledAdam(0.01, lr_multipliers={"proxies": multiplier}),
                          loss=get_loss("normalized_softmax"))
        model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0, shuffle=False)
        # (paths differ between instances, e.g. dense_3 vs dense_7: keep the layer name only)
        return {f"{i}:{v.path.split('/', 1)[-1] if 'proxies' in v.path else v.path.split('/')[-1]}": v.numpy() - b
                for i, (v, b) in enumerate(zip(model.trainable_variables, before))}

    mirrored = adam_update(strategy.scope(), 10.0)
    single = adam_update(tf.distribute.get_strategy().scope(), 10.0)
    plain = adam_update(tf.distribute.get_strategy().scope(), 1.0)
    ratios = {k: float(np.abs(single[k]).max() / np.abs(plain[k]).max()) for k in single}
    out["scaled_adam"] = {"max_abs_diff": max(float(np.abs(mirrored[k] - single[k]).max()) for k in single),
                          "update_scale": max(float(np.abs(v).max()) for v in single.values()),
                          "ratios": ratios}
    # Cross-batch memory: 4 steps of 24 images into a memory of 40 (it wraps at step 2; step 1 is
    # the warm-up), mirrored vs one device on the global batches.
    KIND = "embeddings"
    xs = rng.normal(size=(4, B, D_IN)).astype(np.float32)
    ys = np.stack([rng.permutation(y) for _ in range(4)]).astype(np.int32)

    def memory_run(mirrored, name):
        with strategy.scope() if mirrored else tf.distribute.get_strategy().scope():
            trainer = MemoryTrainer(make_model(), memory_size=40, warmup_steps=1)
            trainer.compile(optimizer=keras.optimizers.SGD(0.5), loss=make_loss(name, False))
        trainer.fit(tf.data.Dataset.from_tensor_slices((xs, ys)), epochs=1, verbose=0, shuffle=False)
        copies = [[np.asarray(c) for c in strategy.experimental_local_results(w.value)]
                  for w in trainer.memory.weights] if mirrored else []
        spread = max((float(np.abs(np.asarray(c[0], float) - np.asarray(c[-1], float)).max()) for c in copies),
                     default=0.0)
        return ([v.numpy() for v in trainer.embedder.trainable_variables],
                {w.name: np.asarray(w.numpy()) for w in trainer.memory.weights}, spread)

    for name in LOSSES:
        if input_kind(name) != "embeddings" or not supports_cross_replica(name):
            continue
        (got, got_mem, spread), (want, want_mem, _) = memory_run(True, name), memory_run(False, name)
        before = [v.numpy() for v in make_model().trainable_variables]
        out[f"{name}/memory"] = {
            "max_abs_diff": max(float(np.abs(g - w).max()) for g, w in zip(got, want)),
            "update_scale": max(float(np.abs(w - b).max()) for w, b in zip(want, before)),
            "memory_max_abs_diff": max(float(np.abs(got_mem[k] - want_mem[k]).max()) for k in want_mem),
            "replicas_memory_max_abs_diff": spread,
            "memory": {k: v.tolist() for k, v in want_mem.items() if k != "embeddings"}}
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
