"""Learning to hash: Hamming mAP by code length on the shipped data, and Hamming search speed.

1. The default preset's data, split and budget (10 epochs x 100 steps), with `model.head=hash`
   at 16 / 32 / 48 / 64 bits (`whitening.enabled=false`, semi-hard triplet loss, margin 0.5),
   and at 32 bits with margins 2 and 8 (the source project's margin at 32 bits); beside the
   default float embedding. The figure is the mAP over the whole ranking of the held-out
   classes, leave-one-out: Hamming ranking of the packed codes for the hashing runs, cosine
   ranking for the float run (`retrieval_metrics(full_ranking=True)`).
2. Search of 1,000,000 random 64-bit codes (8 bytes each) against exact float search of
   1,000,000 x 128-d (matrix product + argpartition) and a self-tuned ScaNN index: queries/s
   (200 queries, k = 10) and the gallery's memory.

    python bench/hashing.py                  # ~15 min on 2 cores
    python bench/hashing.py --search-only    # part 2 only, ~2 min
    python bench/hashing.py --float-only     # part 2 and the float row of part 1
"""

from __future__ import annotations

import tempfile
import time

import numpy as np


def code_lengths(hashing: bool = True) -> list[tuple[str, float, float]]:
    from tfsim import config
    from tfsim.evaluation import retrieval_metrics
    from tfsim.training import train

    rows = []
    runs = [(f"hash {b} bits, margin 0.5", [f"model.code_bits={b}"]) for b in (16, 32, 48, 64)]
    runs += [(f"hash 32 bits, margin {m}", ["model.code_bits=32", f"loss.margin={m}"]) for m in (2.0, 8.0)]
    root = tempfile.mkdtemp(prefix="tfsim-hash-")
    for label, sets in runs if hashing else []:
        cfg = config.load("default", sets + ["model.head=hash", "whitening.enabled=false", "export.enabled=false",
                                             "eval.every_epoch=false", f"run.root={root}"])
        r = train(cfg, f"{root}/{label.replace(' ', '_')}", verbose=0)
        rows.append((label, r.metrics["hamming"]["map"], r.metrics["baselines"]["untrained"]["hamming"]["map"]))
        print(rows[-1], flush=True)
    keep: dict = {}
    from tfsim.training import stages
    original = stages.evaluate_stage

    def keeping(*a, **k):  # the held-out embeddings the run evaluates
        metrics = original(*a, **k)
        keep.update(k["keep"])
        return metrics
    stages.evaluate_stage = keeping
    r = train(config.load("default", ["export.enabled=false", "eval.every_epoch=false", f"run.root={root}"]),
              f"{root}/float", verbose=0)
    from tfsim.training.fit import load_split
    labels = load_split(config.load("default")).test.labels
    full = retrieval_metrics(keep["embeddings"], labels, full_ranking=True)
    rows.append(("float embedding (default preset, 128-d, whitened), cosine", full["map"], float("nan")))
    return rows


def search_speed() -> list[tuple[str, float, float]]:
    from tfsim.index import scann_index
    from tfsim.index.hamming import hamming_topk, pack_codes

    rng = np.random.default_rng(0)
    n = 1_000_000
    centres = rng.normal(size=(2000, 128))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # (as bench/index_speed.py)
    x = centres[rng.integers(0, 2000, n)] + 0.5 / np.sqrt(128) * rng.normal(size=(n, 128))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[rng.choice(n, 200, replace=False)]
    codes = pack_codes(rng.uniform(-1, 1, (n, 64)))
    q_codes = pack_codes(rng.uniform(-1, 1, (200, 64)))
    out = []
    start = time.perf_counter()
    hamming_topk(q_codes, codes, 10)
    out.append(("Hamming, 1M x 64-bit codes (NumPy: XOR + bitwise_count, counting top-k)", 200 / (time.perf_counter() - start),
                codes.nbytes / 1e6))
    start = time.perf_counter()
    for i in range(0, 200, 50):
        s = q[i:i + 50] @ x.T
        np.argpartition(-s, 10, axis=1)[:, :10]
    out.append(("float exact, 1M x 128-d (matrix product + argpartition)", 200 / (time.perf_counter() - start),
                x.nbytes / 1e6))
    searcher, params = scann_index.build(x, "cosine", num_neighbors=10)
    index = scann_index.GalleryIndex(searcher, np.arange(n).astype(str), np.zeros(n, np.int32), ("c",), "cosine",
                                     params)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        index.search(q, 10)
        best = min(best, time.perf_counter() - start)
    out.append((f"ScaNN self-tuned (recall@10 {params['measured_recall']:.3f}), 1M x 128-d", 200 / best,
                float("nan")))
    return out


def main() -> None:
    import sys
    speed = search_speed()
    print("\n| search (200 queries, k=10) | queries/s | gallery MB |")
    print("| --- | --- | --- |")
    for label, qps, mb in speed:
        print(f"| {label} | {qps:,.0f} | {mb:,.0f} |")
    print(f"Hamming vs float exact: {speed[0][1] / speed[1][1]:.1f}x the queries/s, "
          f"{speed[1][2] / speed[0][2]:.0f}x less memory")
    if "--search-only" in sys.argv:
        return
    rows = code_lengths(hashing="--float-only" not in sys.argv)
    print("\n| held-out classes, leave-one-out | mAP (whole ranking) | untrained network |")
    print("| --- | --- | --- |")
    for label, value, untrained in rows:
        print(f"| {label} | {value:.4f} | {untrained:.4f} |")


if __name__ == "__main__":
    main()
