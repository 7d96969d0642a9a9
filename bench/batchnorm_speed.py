"""tfsim's fused BatchNorm (`tfsim.models.backbones.BatchNormalization`) against Keras 3's own, in a
training step: seconds to trace and first run the step, and seconds a step after that.

Each model is built twice with the same weights, once with each layer, and the two are trained
alternately in one process, on random pixels with a mean-square loss and Adam (the BatchNorm is
what differs):

* the small ResNet (`bench/peer_parity.py`'s: width 32, 1 block per stage) at 32 px, batch 40:
  tfsim's, and its copy with Keras's layers (`with_keras_norms`);
* ResNet50 (keras.applications, random weights) at 224 px, batch 16: Keras's, and tfsim's copy
  with fused layers (`tfsim.models.backbones.with_fused_norms`, as tfsim's `resnet50` builds it).

    python bench/batchnorm_speed.py              # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def with_keras_norms(model):
    """A copy of the flat functional `model` (weights included) with Keras's own BatchNormalization
    layers (a nested model would be rebuilt from its config, with tfsim's)."""
    import keras
    copy = keras.models.clone_model(model, clone_function=lambda layer: (
        keras.layers.BatchNormalization if isinstance(layer, keras.layers.BatchNormalization)
        else layer.__class__).from_config(layer.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def step_seconds(model, batch: np.ndarray, steps: int) -> tuple[float, float]:
    """(first call: trace + run, mean seconds of the next `steps` calls) of a training step."""
    import keras
    import tensorflow as tf
    opt = keras.optimizers.Adam(1e-4)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True)))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    x = tf.constant(batch)
    start = time.perf_counter()
    step(x).numpy()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step(x).numpy()
    return first, (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="alternations of the two layers per model")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from tfsim.models.backbones import BatchNormalization, small_resnet, with_fused_norms

    def small():
        fused = small_resnet(32, width=32, blocks_per_stage=1)
        return fused, with_keras_norms(fused)

    def big():
        plain = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
        return with_fused_norms(plain), plain

    rng = np.random.default_rng(0)
    cases = [("small ResNet, 32 px, batch 40", small, rng.uniform(0, 255, (40, 32, 32, 3)).astype(np.float32), 30),
             ("ResNet50, 224 px, batch 16", big, rng.uniform(-1, 1, (16, 224, 224, 3)).astype(np.float32), 4)]
    print(f"{'model':32s} {'BatchNorm':>9s} {'trace + first step s':>22s} {'step s':>9s}")
    for label, build, batch, steps in cases:
        keras.utils.set_random_seed(0)
        fused, plain = build()
        layers = {name: {type(layer) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
                  for name, model in (("fused", fused), ("keras", plain))}
        assert layers == {"fused": {BatchNormalization}, "keras": {keras.layers.BatchNormalization}}, layers
        models = {"fused": fused, "keras": plain}
        rows = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():  # alternating: the machine's drift hits both alike
                rows[name].append(step_seconds(model, batch, steps))
        for name, got in rows.items():
            first, per_step = np.array(got).T
            print(f"{label:32s} {name:>9s} {first.min():10.2f} - {first.max():<9.2f} "
                  f"{per_step.min():.3f} - {per_step.max():.3f}", flush=True)
        keras_step = np.mean([g[1] for g in rows["keras"]])
        print(f"{label:32s} fused / keras step time {np.mean([g[1] for g in rows['fused']]) / keras_step:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
