"""Exact retrieval metrics at the papers' scale: time and extra peak memory.

`tfsim.evaluation.retrieval_metrics` (exact, cosine, leave-one-out) on 60,000 random 512-d
embeddings in 11,000 (SOP-like), 100 and 10 classes, each case in a fresh process so that its
peak resident memory is its own; "extra" is the peak minus the resident memory just before
the call (embeddings and TensorFlow already loaded).

    python bench/eval_memory.py        # ~3 min on 2 cores
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

CASES = (11_000, 100, 10)
N, D = 60_000, 512


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(classes: int) -> dict:
    import tensorflow as tf  # noqa: F401  (loaded before the baseline is read)
    from tfsim.evaluation import retrieval_metrics
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, N)
    x = (rng.normal(size=(classes, D)).astype(np.float32)[labels] * 0.5
         + rng.normal(size=(N, D)).astype(np.float32))
    retrieval_metrics(x[:2000], labels[:2000])  # warm-up: TF's kernels and thread pools
    before = rss_mb()
    start = time.perf_counter()
    m = retrieval_metrics(x, labels)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"classes": classes, "seconds": seconds, "extra_peak_gb": (peak - before) / 1024,
            "recall@1": m["recall@1"], "map@r": m["map@r"]}


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(measure(int(sys.argv[1]))))
        return
    rows = []
    for classes in CASES:
        out = subprocess.run([sys.executable, __file__, str(classes)], capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| embeddings | classes | time | extra peak memory |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {N:,} x {D} | {r['classes']:,} | {r['seconds']:.0f} s | {r['extra_peak_gb']:.2f} GB |")


if __name__ == "__main__":
    main()
