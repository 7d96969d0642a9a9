"""The input pipeline at Stanford Online Products' size: scan cost, images/s, memory.

Generates (once, under `$TFSIM_BENCH_CACHE/sop_like/`) a folder of 120,053 small JPEGs in
11,318 classes (SOP's counts; 48 x 48 px, smooth random images), then measures, each in a
fresh process so that peak memory is its own:

* the scan (`sources.load_folder`, every file decoded once, on all cores): seconds per 10,000
  files, and the listing alone (`check_files=False`);
* the training pipeline (`pipeline.train_dataset`: P x K = 16 x 4 = 64 images per batch, at
  224 px, with augmentation) on the whole folder and on a tenth of it: images/s and peak
  resident memory (memory must not grow with the dataset beyond the index arrays);
* ResNet50's training step at batch 64, 224 px on this CPU: the images/s the pipeline has to
  keep up with (the ratio pipeline / model).

    python bench/input_pipeline.py            # ~10 min on 2 cores (the first run also writes the files)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("TFSIM_BENCH_CACHE", Path.home() / ".cache" / "tfsim-bench"))
ROOT = CACHE / "sop_like"
CLASSES, IMAGES = 11_318, 120_053


def generate(root: Path) -> None:
    """SOP-sized folder of small smooth JPEGs (written once; `.complete` marks it)."""
    if (root / ".complete").is_file():
        return
    from PIL import Image
    rng = np.random.default_rng(0)
    per_class = np.full(CLASSES, IMAGES // CLASSES)
    per_class[: IMAGES - per_class.sum()] += 1
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    start = time.time()
    for c, n in enumerate(per_class):
        folder = root / f"class_{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, 3)
        for i in range(n):
            a, b = rng.uniform(-80, 80, 2)
            img = base + a * xx[..., None] + b * yy[..., None] + rng.normal(0, 4, (48, 48, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=85)
    (root / ".complete").write_text("ok")
    print(f"wrote {IMAGES} JPEGs in {time.time() - start:.0f} s", flush=True)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_scan(check: bool) -> dict:
    from tfsim.data import sources
    start = time.perf_counter()
    images = sources.load_folder(str(ROOT), check_files=check)
    seconds = time.perf_counter() - start
    return {"files": len(images), "seconds": seconds, "per_10k_files": seconds / len(images) * 1e4,
            "peak_mb": peak_mb()}


def measure_pipeline(fraction: float, batches: int) -> dict:
    import tensorflow as tf  # noqa: F401
    from tfsim.data import pipeline, sources
    images = sources.load_folder(str(ROOT), check_files=False)
    if fraction < 1:
        keep = np.isin(images.labels, np.arange(int(len(images.class_names) * fraction)))
        images = images.subset(np.flatnonzero(keep))
    before = peak_mb()
    ds = pipeline.train_dataset(images, 16, 4, 224, seed=0, augment_images=True, flip=True)
    it = iter(ds)
    for _ in range(5):  # warm-up: tracing, thread pools
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
    seconds = time.perf_counter() - start
    return {"rows": len(images), "images_per_s": batches * 64 / seconds, "peak_mb": peak_mb(),
            "peak_mb_before_pipeline": before, "batch_shape": list(x.shape)}


def measure_model(steps: int) -> dict:
    import keras
    model = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3))
    out = keras.layers.Dense(128)(model.output)
    net = keras.Model(model.input, out)
    net.compile("adam", loss="mse")
    x = np.random.default_rng(0).uniform(0, 255, (64, 224, 224, 3)).astype(np.float32)
    y = np.zeros((64, 128), np.float32)
    net.train_on_batch(x, y)  # compile
    start = time.perf_counter()
    for _ in range(steps):
        net.train_on_batch(x, y)
    return {"images_per_s": steps * 64 / (time.perf_counter() - start)}


def child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", choices=["scan", "list", "pipeline", "model"])
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.measure:
        result = {"scan": lambda: measure_scan(True), "list": lambda: measure_scan(False),
                  "pipeline": lambda: measure_pipeline(args.fraction, args.batches),
                  "model": lambda: measure_model(args.steps)}[args.measure]()
        print(json.dumps(result))
        return
    generate(ROOT)
    results = {"list": child(["--measure", "list"]), "scan": child(["--measure", "scan"]),
               "pipeline_tenth": child(["--measure", "pipeline", "--fraction", "0.1"]),
               "pipeline_all": child(["--measure", "pipeline"]),
               "model": child(["--measure", "model"])}
    s, listed, a, t, m = (results[k] for k in ("scan", "list", "pipeline_all", "pipeline_tenth", "model"))
    print(f"scan (decode every file, {os.cpu_count()} cores): {s['files']} files in {s['seconds']:.1f} s = "
          f"{s['per_10k_files']:.2f} s per 10,000 files; listing alone {listed['per_10k_files']:.2f} s per 10,000")
    print(f"pipeline, 64-image P x K batches at 224 px with augmentation: {a['images_per_s']:.0f} images/s on "
          f"{a['rows']} rows, {t['images_per_s']:.0f} images/s on {t['rows']} rows")
    print(f"peak memory: {a['peak_mb']:.0f} MB with {a['rows']} rows, {t['peak_mb']:.0f} MB with {t['rows']} "
          f"rows (ratio {a['peak_mb'] / t['peak_mb']:.2f} for {a['rows'] / t['rows']:.1f}x the rows)")
    print(f"ResNet50 training step, batch 64 at 224 px: {m['images_per_s']:.1f} images/s; the pipeline feeds "
          f"{a['images_per_s'] / m['images_per_s']:.0f}x that")
    out = Path("runs/bench/input_pipeline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
