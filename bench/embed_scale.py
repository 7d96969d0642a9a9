"""Embedding a catalogue past one machine: the Beam job against the single-process index command,
and where an index should be split into shards.

Parts (`--parts`, comma-separated; all by default, ~10 min on 2 cores):

1. `throughput`: a catalogue of `--images` JPEG files (the shipped Fashion-MNIST images, resized
   to 64 px, some mirrored so every file differs) embedded by an export of the default preset's
   network at 64 px, four ways, each a whole command in its own process:
   * `index command`: `python -m tfsim.pipelines.index --model M --data D --out I` (one process:
     lists and checks every file, embeds, builds the index);
   * `embed, N workers`: `python -m tfsim.pipelines.embed --workers N` (Beam's DirectRunner,
     N worker processes) followed by `index --embeddings`;
   each also on a 200-image catalogue, so that the fixed cost (Python, TensorFlow, Beam's
   workers, loading the model) and the per-image rate are separated:
   rate = (images - 200) / (seconds - seconds at 200).
2. `decode`: JPEG decode + resize to 224 px on one core (images/s): what one worker core can
   feed a GPU with, the bound on a GPU worker's rate besides the GPU itself.
3. `resnet50`: the ResNet50 embedder at 224 px on this machine's CPU, images/s (one process).
4. `index`: the self-tuned float index (`tfsim.index.Index.build`, 128-d, target recall 0.95) at
   100k, 300k and 1M items: build seconds, folder bytes, and the peak memory of building and of
   loading it (each in its own process); the growth per item gives the split point.
5. `projection` (printed after 2-4): 50M images at 224 px with ResNet50 on a cluster of W
   workers with one GPU each, from the measured per-core decode rate and `--gpu-rate` (the
   GPU's ResNet50 images/s: an input, not measured here: no GPU on this machine).

    python bench/embed_scale.py
    python bench/embed_scale.py --parts throughput --images 6000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SMALL = 200


def _run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def make_catalogue(root: Path, n: int, size: int = 64) -> Path:
    """`n` JPEG files in class folders from the shipped images (mirrored copies past 6,000)."""
    import tensorflow as tf
    from tfsim.data.sources import load_default
    images = load_default()
    for i in range(n):
        j = i % len(images)
        pixels = images.images[j]
        if (i // len(images)) % 2:
            pixels = pixels[:, ::-1]
        big = tf.image.resize(np.repeat(pixels[..., :1], 3, -1), (size, size)).numpy().astype(np.uint8)
        folder = root / images.class_names[images.labels[j]].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:07d}.jpg").write_bytes(tf.io.encode_jpeg(big, quality=90).numpy())
    return root


def make_export(root: Path, image_size: int = 64, backbone: str = "small_resnet") -> Path:
    from tfsim import config
    from tfsim.export import export_embedder
    from tfsim.training import build_embedder
    cfg = config.apply_overrides(config.load_preset("default"), [f"model.image_size={image_size}",
                                                               f"model.backbone={backbone}"])
    return export_embedder(build_embedder(cfg), root, backbone, image_size, metadata={"similarity": "cosine"})


def throughput(n: int, work: Path) -> list[str]:
    model = make_export(work / "exports")
    small, big = make_catalogue(work / "small", SMALL), make_catalogue(work / "big", n)
    rows = {}
    for name, workers in (("index command", None), ("embed, 1 worker", 1), ("embed, 2 workers", 2)):
        seconds = []
        for data, tag in ((small, "s"), (big, "b")):
            out = work / f"{tag}-{workers}"
            if workers is None:
                seconds.append(_run(["tfsim.pipelines.index", "--model", str(model), "--data", str(data), "--out",
                                     str(out / "index")], work))
            else:
                t = _run(["tfsim.pipelines.embed", "--model", str(model), "--data", str(data), "--out",
                          str(out / "shards"), "--workers", str(workers), "--shard-size", "500"], work)
                t += _run(["tfsim.pipelines.index", "--embeddings", str(out / "shards"), "--out", str(out / "index")],
                          work)
                seconds.append(t)
        rate = (n - SMALL) / max(seconds[1] - seconds[0], 1e-9)
        rows[name] = (seconds, rate)
        print(f"  {name}: {seconds[0]:.1f} s at {SMALL}, {seconds[1]:.1f} s at {n:,}: {rate:,.0f} images/s", flush=True)
    base = rows["index command"]
    lines = [f"\n| {n:,} JPEGs at 64 px, default network | s at {SMALL} (fixed cost) | s at {n:,} | images/s "
             f"(after the fixed cost) | whole command vs index command | images/s vs index command |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, (seconds, rate) in rows.items():
        lines.append(f"| {name} | {seconds[0]:.1f} | {seconds[1]:.1f} | {rate:,.0f} | "
                     f"{base[0][1] / seconds[1]:.2f}x | {rate / base[1]:.2f}x |")
    return lines


def decode_rate() -> float:
    """JPEG decode + resize to 224 px, one core, images/s (in its own process: one thread)."""
    out = subprocess.run([sys.executable, __file__, "--child", "decode"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _decode_child(seconds: float = 5.0) -> float:
    """JPEG decode + resize to 224 px on one thread, images/s (500x375 JPEGs of smooth noise)."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tfsim.data.preprocess import decode, preprocess
    rng = np.random.default_rng(0)
    base = tf.image.resize(rng.integers(0, 255, (60, 80, 3)).astype(np.float32), (375, 500)).numpy()
    files = [tf.io.encode_jpeg((base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8), quality=90)
             for _ in range(16)]
    step = tf.function(lambda data: preprocess(decode(data), 224))
    step(files[0])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(files[count % len(files)])
        count += 1
    return count / (time.perf_counter() - start)


def resnet50_rate(batches: int = 3, batch: int = 32) -> float:
    import tensorflow as tf
    from tfsim import config
    from tfsim.training import build_embedder
    cfg = config.apply_overrides(config.load_preset("default"), ["model.image_size=224", "model.backbone=resnet50"])
    model = build_embedder(cfg)
    x = tf.random.uniform((batch, 224, 224, 3), 0, 255)
    call = tf.function(lambda v: model(v, training=False))
    call(x)
    start = time.perf_counter()
    for _ in range(batches):
        call(x).numpy()
    return batches * batch / (time.perf_counter() - start)


_INDEX_CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {bench!r})
from index_speed import vectors
from tfsim.index import Index

def status(key):  # kB, from /proc (VmRSS: now; VmHWM: the peak since the last reset)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

n, folder, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if mode == "build":
    rng = np.random.default_rng(0)
    x = vectors(n, rng, rng.normal(size=(2000, 128)))
    ids = np.array([f"catalogue/{{i:09d}}.jpg" for i in range(n)])
    before = status("VmRSS")
    reset_peak()
    start = time.perf_counter()
    index = Index.build(x, ids=ids, target_recall=0.95)
    seconds = time.perf_counter() - start
    peak = status("VmHWM") - before
    index.save(folder)
    print(json.dumps({{"seconds": seconds, "peak_kb": peak, "recall": index.params.get("measured_recall"),
                      "mode": index.params["mode"]}}))
else:
    Index.build(np.eye(4, 128, dtype=np.float32), ids=np.arange(4))  # (ScaNN's own start-up, not the index)
    before = status("VmRSS")
    start = time.perf_counter()
    index = Index.load(folder)
    index.search(np.ones((1, 128), np.float32), 10)
    print(json.dumps({{"seconds": time.perf_counter() - start, "rss_kb": status("VmRSS") - before}}))
"""


def index_growth(sizes=(100_000, 300_000, 1_000_000), work: Path = Path(".")) -> list[str]:
    script = _INDEX_CHILD.format(bench=str(Path(__file__).parent))
    rows = []
    for n in sizes:
        folder = work / f"index-{n}"
        built = subprocess.run([sys.executable, "-c", script, str(n), str(folder), "build"], capture_output=True,
                               text=True)
        if built.returncode:
            raise SystemExit(built.stderr[-3000:])
        b = json.loads(built.stdout.strip().splitlines()[-1])
        loaded = json.loads(subprocess.run([sys.executable, "-c", script, str(n), str(folder), "load"],
                                           capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        rows.append((n, b, loaded, size))
        print(f"  {n:,}: build {b['seconds']:.1f} s ({b['mode']}, recall {b['recall']}), "
              f"folder {size / 2**20:,.0f} MB, "
              f"build peak {b['peak_kb'] / 2**10:,.0f} MB, loaded {loaded['rss_kb'] / 2**10:,.0f} MB", flush=True)
    lines = ["\n| items (128-d, target recall 0.95) | build s | folder MB | MB building (peak) | MB loaded | "
             "build s per 100k | loaded bytes per item | load s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, b, loaded, size in rows:
        lines.append(f"| {n:,} | {b['seconds']:.1f} | {size / 2**20:,.0f} | {b['peak_kb'] / 2**10:,.0f} | "
                     f"{loaded['rss_kb'] / 2**10:,.0f} | {b['seconds'] / n * 1e5:.1f} | "
                     f"{loaded['rss_kb'] * 1024 / n:,.0f} | {loaded['seconds']:.1f} |")
    (n0, b0, l0, s0), (n1, b1, l1, s1) = rows[0], rows[-1]
    per_item = max((l1["rss_kb"] - l0["rss_kb"]) * 1024 / (n1 - n0), 1.0)
    build_peak = max((b1["peak_kb"] - b0["peak_kb"]) * 1024 / (n1 - n0), 1.0)
    build_per_item = (b1["seconds"] - b0["seconds"]) / (n1 - n0)
    lines.append(f"\nGrowth from {n0:,} to {n1:,}: {per_item:,.0f} bytes of memory per item loaded, "
                 f"{(s1 - s0) / (n1 - n0):,.0f} bytes on disk, {build_per_item * 1e6:.1f} s of building per 1M items "
                 f"(2 cores), {build_peak:,.0f} bytes per item at the build's peak. Half of a 64 GB host holds "
                 f"{32 * 2**30 / per_item / 1e6:,.0f}M items searched, and builds "
                 f"{32 * 2**30 / build_peak / 1e6:,.0f}M at once; half of 16 GB: {8 * 2**30 / per_item / 1e6:,.0f}M "
                 f"and {8 * 2**30 / build_peak / 1e6:,.0f}M.")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="throughput,decode,resnet50,index")
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--index-sizes", default="100000,300000,1000000")
    p.add_argument("--gpu-rate", type=float, default=2000.0,
                   help="ResNet50 images/s of one GPU at 224 px (an input: no GPU here)")
    p.add_argument("--catalogue", type=float, default=50e6, help="images to project for (default 50M)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "decode":
        print(_decode_child())
        return 0
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "throughput" in parts:
            lines += throughput(args.images, work)
        decode = resnet = None
        if "decode" in parts:
            decode = decode_rate()
            lines.append(f"\nJPEG decode + resize to 224 px, one core: {decode:,.0f} images/s")
        if "resnet50" in parts:
            resnet = resnet50_rate()
            lines.append(f"ResNet50 embedder at 224 px on this machine's CPU (2 cores): {resnet:,.1f} images/s")
        if "index" in parts:
            lines += index_growth(tuple(int(s) for s in args.index_sizes.split(",")), work)
        if decode:
            lines.append(f"\nProjection: {args.catalogue / 1e6:,.0f}M images at 224 px, ResNet50, one GPU per worker "
                         f"at {args.gpu_rate:,.0f} images/s (--gpu-rate):")
            lines.append("| worker vCPUs | decode bound images/s | worker images/s | workers | hours |")
            lines.append("| --- | --- | --- | --- | --- |")
            for cpus in (4, 8, 16):
                bound = decode * cpus
                rate = min(bound, args.gpu_rate)
                for workers in (8, 32):
                    lines.append(f"| {cpus} | {bound:,.0f} | {rate:,.0f} | {workers} | "
                                 f"{args.catalogue / (rate * workers) / 3600:,.1f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
