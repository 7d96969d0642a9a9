"""tf.data's autotuning on (TensorFlow's default) against off (tfsim's datasets): the wait when an
iterator is deleted, a run's wall time, and the streaming input's speed.

On TensorFlow 2.20 an autotuned iterator's tuning thread sleeps between rounds for a period that
doubles while the iterator lives (up to a minute), and deleting the iterator waits for that sleep
to end (`tfsim.data.pipeline.without_autotune`). Measured here in one process, the two settings
alternating:

* teardown: `model.fit` of the bench's small ResNet (`bench/peer_parity.py`'s matched recipe:
  P x K = 5 x 8 at 32 px, images in memory) on tfsim's training batches for `--steps` steps; the
  seconds from fit's last callback (`on_train_end`) until `fit` returns, which is the deletion of
  fit's iterator, and the fit's wall time;
* streaming: images/s of the training pipeline decoding JPEG files and resizing them to 224 px
  (the path of a folder too large to hold in memory), on and off, so that turning autotuning off
  is seen not to slow the input.

    python bench/iterator_teardown.py              # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("TFSIM_BENCH_CACHE", Path.home() / ".cache" / "tfsim-bench"))


def with_autotune(ds, enabled: bool):
    """`ds` (one of tfsim's, autotuning off) with autotuning set to `enabled` (the outer options win)."""
    import tensorflow as tf
    options = tf.data.Options()
    options.autotune.enabled = enabled
    return ds.with_options(options)


def teardown(images, steps: int, autotune: bool, seed: int) -> dict:
    """One fit of `steps` steps: its wall time and the wait between `on_train_end` and fit's return."""
    import keras
    from tfsim import config
    from tfsim.data import pipeline
    from tfsim.training.task import Task
    cfg = config.apply_overrides(config.load_preset("default"), [
        "model.backbone=small_resnet", "model.width=32", "model.blocks_per_stage=1", "model.embedding_dim=128",
        "model.image_size=32", "loss.name=batch_all_triplet", "loss.margin=0.2", "train.lr_schedule=constant",
        "whitening.enabled=false", f"train.seed={seed}"])
    cfg = config.resolve(cfg)
    keras.backend.clear_session()
    task = Task(cfg)
    model = task.build_model()
    model.compile(optimizer=task.build_optimizer(steps), loss=task.build_loss())
    ds = with_autotune(pipeline.train_dataset(images, 5, 8, 32, seed=seed), autotune)
    ended = {}

    class End(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            ended["at"] = time.perf_counter()

    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[End()], shuffle=False)
    done = time.perf_counter()
    return {"fit_s": done - start, "wait_s": done - ended["at"]}


def jpeg_folder(root: Path, count: int = 600, side: int = 256) -> Path:
    """`count` smooth random JPEGs of `side` px in 20 classes (written once)."""
    from PIL import Image
    if (root / ".complete").is_file():
        return root
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"c{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(folder / f"{i:04d}.jpg", quality=90)
    (root / ".complete").write_text("")
    return root


def streaming(images, autotune: bool, batches: int) -> float:
    """Images/s of the training pipeline on files (P x K = 16 x 4 at 224 px, augmented)."""
    from tfsim.data import pipeline
    it = iter(with_autotune(pipeline.train_dataset(images, 16, 4, 224, seed=0, flip=True), autotune))
    for _ in range(5):  # warm-up: tracing, thread pools
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    del it
    return batches * 64 / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="110,220", help="comma-separated fit lengths")
    p.add_argument("--repeats", type=int, default=5, help="fits per length and setting")
    p.add_argument("--batches", type=int, default=40, help="streaming batches per measurement")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tfsim.data import sources

    default = sources.load_default()
    images = default.subset(np.flatnonzero(default.labels < 5))  # 3,000 images in memory
    print(f"teardown: fit of the small ResNet on {len(images):,} images in memory, 32 px, P x K = 5 x 8")
    print(f"{'steps':>6s} {'autotune':>9s} {'fit s (mean, max)':>20s} {'wait at the end s (mean, max)':>31s} "
          f"{'fits that waited > 0.5 s':>25s}")
    for steps in (int(s) for s in args.steps.split(",")):
        rows = {True: [], False: []}
        for r in range(args.repeats):
            for autotune in (True, False):  # alternating: the machine's drift hits both alike
                rows[autotune].append(teardown(images, steps, autotune, seed=r))
        for autotune in (True, False):
            fit = np.array([x["fit_s"] for x in rows[autotune]])
            wait = np.array([x["wait_s"] for x in rows[autotune]])
            print(f"{steps:6d} {'on' if autotune else 'off':>9s} {fit.mean():12.2f}, {fit.max():6.2f} "
                  f"{wait.mean():22.2f}, {wait.max():6.2f} {int((wait > 0.5).sum()):>19d} of {len(wait)}",
                  flush=True)

    files = sources.load_folder(str(jpeg_folder(CACHE / "teardown_jpegs")), check_files=False)
    rates = {True: [], False: []}
    for _ in range(3):
        for autotune in (True, False):
            rates[autotune].append(streaming(files, autotune, args.batches))
    on, off = np.median(rates[True]), np.median(rates[False])
    print(f"\nstreaming: {len(files):,} JPEGs of 256 px decoded and resized to 224 px, P x K = 16 x 4, "
          f"median of 3 x {args.batches} batches")
    print(f"autotune on {on:7.0f} images/s\nautotune off {off:6.0f} images/s\noff / on {off / on:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
