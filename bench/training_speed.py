"""Training images/s: float32 vs mixed precision vs XLA, 1 vs 2 devices, 1 vs 2 workers.

The default model (small ResNet at 28 px) and ResNet50 (random weights) at 224 px, batch 64
(16 classes x 4 images, synthetic pixels), the semi-hard triplet loss, Adam. Each case runs
in a fresh process (dtype policy, logical devices and TF_CONFIG are per process); images/s is
measured over the steps after the first two (tracing, warm-up). "2 devices" splits this CPU
into 2 logical devices under MirroredStrategy; "2 workers" runs two processes on 127.0.0.1
under MultiWorkerMirroredStrategy (`tfsim.training.distributed.fit_loop`), each on the whole
CPU, so both compete for the same 2 cores: the ratio shows the communication overhead, not
a speed-up. One run on this 2-core machine; compare ratios within it.

    python bench/training_speed.py          # ~10 min
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

CASES = [  # (label, backbone, size, precision, jit, devices, workers, steps)
    ("default model, float32", "small_resnet", 28, "float32", False, 1, 1, 30),
    ("default model, mixed_bfloat16", "small_resnet", 28, "mixed_bfloat16", False, 1, 1, 30),
    ("default model, mixed_float16", "small_resnet", 28, "mixed_float16", False, 1, 1, 30),
    ("default model, float32 + XLA", "small_resnet", 28, "float32", True, 1, 1, 30),
    ("default model, 2 logical devices", "small_resnet", 28, "float32", False, 2, 1, 30),
    ("default model, 2 workers", "small_resnet", 28, "float32", False, 1, 2, 30),
    ("ResNet50 224 px, float32", "resnet50", 224, "float32", False, 1, 1, 5),
    ("ResNet50 224 px, mixed_bfloat16", "resnet50", 224, "mixed_bfloat16", False, 1, 1, 5),
    ("ResNet50 224 px, float32 + XLA", "resnet50", 224, "float32", True, 1, 1, 5),
]
BATCH = 64


def case(backbone: str, size: int, precision: str, jit: bool, devices: int, steps: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    multi = "TF_CONFIG" in os.environ
    if multi:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif devices > 1:
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])
    else:
        strategy = tf.distribute.get_strategy()
    from tfsim.losses import TripletSemiHardLoss
    from tfsim.models import build_embedding_model
    from tfsim.training import distributed

    keras.config.set_dtype_policy(precision)
    with strategy.scope():
        model = build_embedding_model(backbone, size, 128, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=TripletSemiHardLoss(cross_replica=True),
                      jit_compile=jit)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (BATCH, size, size, 3)).astype(np.float32)
    labels = np.repeat(np.arange(16), 4).astype(np.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    stamps = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    if multi:
        batches = distributed.worker_batches(strategy, lambda: dataset, BATCH)
        distributed.fit_loop(model, strategy, batches, 1, steps + 2, 0, 0, [Clock()])
    else:
        model.fit(dataset, epochs=1, steps_per_epoch=steps + 2, callbacks=[Clock()], verbose=0)
    seconds = stamps[-1] - stamps[1]
    return {"images_per_second": steps * BATCH / seconds, "step_seconds": seconds / steps}


def run(label, backbone, size, precision, jit, devices, workers, steps) -> dict:
    args = [sys.executable, __file__, json.dumps([backbone, size, precision, jit, devices, steps])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if workers == 1:
        out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
        outs = [out]
    else:
        ports = []
        for _ in range(workers):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        procs = []
        for index in range(workers):
            config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                      "task": {"type": "worker", "index": index}}
            procs.append(subprocess.Popen(args, env={**env, "TF_CONFIG": json.dumps(config)}, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        outs = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=3600)
            outs.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    for out in outs:
        if out.returncode:
            raise RuntimeError(f"{label}: {out.stderr[-2000:]}")
    return json.loads(outs[0].stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1:
        backbone, size, precision, jit, devices, steps = json.loads(sys.argv[1])
        print(json.dumps(case(backbone, size, precision, jit, devices, steps)))
        return
    rows = []
    for spec in CASES:
        rows.append((spec[0], run(*spec)))
        print(f"{spec[0]}: {rows[-1][1]['images_per_second']:.0f} images/s", flush=True)
    base = {"default": rows[0][1]["images_per_second"], "ResNet50": rows[6][1]["images_per_second"]}
    print("\n| case | images/s | s per step (batch 64) | vs float32 of the same model |")
    print("| --- | --- | --- | --- |")
    for label, r in rows:
        ref = base["ResNet50"] if label.startswith("ResNet50") else base["default"]
        print(f"| {label} | {r['images_per_second']:,.0f} | {r['step_seconds']:.3f} | "
              f"{r['images_per_second'] / ref:.2f} |")


if __name__ == "__main__":
    main()
