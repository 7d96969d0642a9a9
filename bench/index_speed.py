"""The self-tuned ScaNN index against exact search and ScaNN configured by hand.

L2-normalised 128-d vectors around 2,000 cluster centres (noise 0.5 of the centre's norm),
2,000 queries drawn the same way (not in the gallery), k = 10, cosine. For each gallery size:

* numpy exact: matrix product + argpartition (timed on 200 queries; recall 1 by definition),
* ScaNN by hand: 2 sqrt(G) leaves, 2 searched, AH 2 dims/block (threshold 0.2), reorder 50,
  trained on up to 250,000 vectors (ScaNN's README example),
* tfsim: `tfsim.index.float_search.build(target_recall=0.95)`: the same tree, with the leaves
  searched and the reorder depth chosen by measuring recall on a sample of gallery vectors,
* ScaNN brute force (what tfsim uses below `BRUTE_FORCE_BELOW` items), at 20,000 items only.

Queries/s are one thread's (`search_batched` over the 2,000 queries, best of 3); build times
include tfsim's tuning. Ratios are within this one run.

    python bench/index_speed.py                  # 100k and 1M (~6 min on 2 cores)
    python bench/index_speed.py 20000 100000     # other sizes
"""

from __future__ import annotations

import sys
import time

import numpy as np

K, D, CLUSTERS, NOISE = 10, 128, 2000, 0.5


def vectors(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + NOISE / np.sqrt(D) * rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    out = []
    for start in range(0, len(queries), 100):
        scores = queries[start:start + 100] @ gallery.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def qps(search, queries: np.ndarray) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        search(queries)
        best = min(best, time.perf_counter() - start)
    return len(queries) / best


def run(n: int) -> list[dict]:
    from scann import scann_ops_pybind

    from tfsim.index import float_search

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    gallery, queries = vectors(n, rng, centres), vectors(2000, rng, centres)
    truth = exact(queries, gallery, K)
    rows = [{"index": "numpy exact (matrix product + argpartition)", "recall": 1.0,
             "qps": qps(lambda q: exact(q, gallery, K), queries[:200]), "build": 0.0}]

    leaves = max(2, int(round(2 * np.sqrt(n))))
    start = time.perf_counter()
    hand = (scann_ops_pybind.builder(gallery, K, "dot_product")
            .tree(num_leaves=leaves, num_leaves_to_search=2, training_sample_size=min(n, 250_000))
            .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(50).build())
    hand_build = time.perf_counter() - start
    rows.append({"index": f"ScaNN by hand: {leaves} leaves, 2 searched, AH 2 dims/block, reorder 50",
                 "recall": recall(hand.search_batched(queries)[0], truth),
                 "qps": qps(lambda q: hand.search_batched(q), queries), "build": hand_build})

    start = time.perf_counter()
    searcher, params = float_search.build(gallery, "cosine", num_neighbors=K, target_recall=0.95)
    ours_build = time.perf_counter() - start
    index = float_search.GalleryIndex(searcher, np.arange(n).astype(str), np.zeros(n, np.int32), ("c",),
                                      "cosine", params)
    rows.append({"index": f"tfsim self-tuned (target 0.95): {params.get('num_leaves')} leaves, "
                          f"{params.get('num_leaves_to_search')} searched, reorder {params.get('reorder')}; "
                          f"sample recall {params.get('measured_recall', 1.0):.3f}",
                 "recall": recall(index.search(queries, K).indices, truth),
                 "qps": qps(lambda q: index.search(q, K), queries), "build": ours_build})
    if n <= 20_000:
        start = time.perf_counter()
        brute = scann_ops_pybind.builder(gallery, K, "dot_product").score_brute_force().build()
        rows.append({"index": "ScaNN brute force", "recall": recall(brute.search_batched(queries)[0], truth),
                     "qps": qps(lambda q: brute.search_batched(q), queries), "build": time.perf_counter() - start})
    return rows


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    for n in sizes:
        rows = run(n)
        hand = rows[1]
        print(f"\n{n:,} vectors x {D}, {CLUSTERS:,} clusters, 2,000 queries, k={K}")
        print("| index | recall@10 | queries/s | build s | queries/s vs hand | build vs hand |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['index']} | {r['recall']:.3f} | {r['qps']:,.0f} | {r['build']:.1f} | "
                  f"{r['qps'] / hand['qps']:.2f} | {r['build'] / hand['build'] if r['build'] else 0:.2f} |")


if __name__ == "__main__":
    main()
