"""Learning to hash: the default margin across datasets, Hamming mAP by code length, search speed.

1. `margins`: which `loss.margin` the hash head should use, measured across data, never on
   one dataset's held-out classes: 32-bit codes trained with tfsim's default preset
   (semi-hard triplet, whitening off) on the four image folders of `bench/peer_parity.py`
   (the shipped Fashion-MNIST subset, OpenCV's digits, scikit-learn's digits, Fashion-MNIST
   test images; 32 px, P=5 x K=8, 5 passes), at margins 0.25 / 0.5 / 1 / 1.41 (the loss sees
   the codes divided by sqrt(bits): 1.41 is the Image-Retrieve project's margin 8 at 32
   bits), over seeds. Figure: Hamming mAP over the whole ranking of the held-out classes
   (leave-one-out), mean +- sd.
2. `lengths`: the default preset's data, split and budget (10 epochs x 100 steps), `model.head=hash`
   at 16 / 32 / 48 / 64 bits beside the default float embedding, with a database / query
   protocol on the held-out classes: every 5th image of each class queries a database of
   the others (480 queries, 1,920 database images). Hamming ranking of the packed codes;
   cosine ranking of the float embedding (`retrieval_metrics(full_ranking=True)`).
3. `papers`: the hashing papers' protocol (and the Image-Retrieve project's) on real data of
   the same classes: `data.protocol=database_query` on Fashion-MNIST (Debian's
   dataset-fashion-mnist), 1,000 training images per class (the database, 10,000) and 100
   test images per class (the queries, 1,000), written as a `path,label,split` CSV list; the
   default budget, 16 / 32 / 48 / 64 bits and the float embedding, one seed.
4. `faiss`: tfsim's Hamming search (the index's, on faiss, and the NumPy reference) against
   faiss's exact binary search on one thread and on all, and the inverted file's tuned recall and
   queries/s, at 1M and 10M clustered 64-bit codes (`against_faiss`; ~3 min).
5. `search`: 1,000,000 random 64-bit codes (8 bytes each) against exact float search of
   1,000,000 x 128-d (matrix product + argpartition) and a self-tuned ScaNN index: queries/s
   (200 queries, k = 10) and the gallery's memory.

    python bench/hashing.py                          # all five, ~1.5 h on 2 cores
    python bench/hashing.py --parts faiss            # ~3 min
    python bench/hashing.py --parts search,lengths   # ~20 min
    python bench/hashing.py --parts margins --seeds 0,1,2 --margins 0.5,1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import peer_parity  # noqa: E402  (the datasets and their splits)


def _held_out_run(cfg, run_dir: Path):
    """Trains `cfg`; returns (metrics, the held-out embeddings it evaluated)."""
    import keras
    from tfsim.training import stages, train

    keep: dict = {}
    original = stages.evaluate_stage

    def keeping(*a, **k):
        metrics = original(*a, **k)
        keep.update(k["keep"])
        return metrics
    stages.evaluate_stage = keeping
    try:
        keras.backend.clear_session()
        result = train(cfg, run_dir, resume=False, verbose=0)
    finally:
        stages.evaluate_stage = original
    return result.metrics, keep["embeddings"]


def margins(seeds: list[int], values: list[float], bits: int = 32) -> list[str]:
    args = argparse.Namespace(image_size=32, classes_per_batch=5, examples_per_class=8)
    passes = 5
    lines = [f"| dataset (32 px, P=5 x K=8, {passes} passes) | " + " | ".join(f"margin {m:g}" for m in values)
             + " | untrained |", "|" + " --- |" * (len(values) + 2)]
    means = {m: [] for m in values}
    root = Path(tempfile.mkdtemp(prefix="tfsim-hash-margins-"))
    for name, build in peer_parity.DATASETS.items():
        folder, train_classes, test_classes = build(peer_parity.CACHE / "data", None)
        n_train = len(peer_parity.pixels(folder, train_classes, test_classes, 32)[1])
        steps = n_train // 40
        cells, untrained = [], []
        for m in values:
            scores = []
            for seed in seeds:
                cfg = peer_parity.tfsim_config("default", folder, train_classes, test_classes, args, seed,
                                               ["model.head=hash", f"model.code_bits={bits}", f"loss.margin={m}",
                                                "whitening.enabled=false", f"train.epochs={passes}",
                                                f"train.steps_per_epoch={steps}"])
                metrics, _ = _held_out_run(cfg, root / f"{name}_{m}_{seed}")
                scores.append(metrics["hamming"]["map"])
                untrained.append(metrics["baselines"]["untrained"]["hamming"]["map"])
                print(f"[{name}] margin {m:g} seed {seed}: Hamming mAP {scores[-1]:.4f}", flush=True)
            means[m].append(np.mean(scores))
            cells.append(f"{np.mean(scores):.3f} +- {np.std(scores):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(untrained):.3f} |")
    lines.append("| mean over datasets | " + " | ".join(f"{np.mean(means[m]):.3f}" for m in values) + " | |")
    return lines


def database_query(labels: np.ndarray) -> np.ndarray:
    """Query rows: every 5th image of each class (the others are the database)."""
    queries = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        queries[np.flatnonzero(labels == c)[::5]] = True
    return queries


def code_lengths(seeds: list[int], margin: float | None) -> list[str]:
    from tfsim import config
    from tfsim.evaluation import retrieval_metrics
    from tfsim.index.hamming import hamming_map, pack_codes
    from tfsim.training.task import load_split

    labels = load_split(config.load("default")).test.labels
    q = database_query(labels)
    root = Path(tempfile.mkdtemp(prefix="tfsim-hash-lengths-"))
    common = ["export.enabled=false", "index.enabled=false", "eval.every_epoch=false"]
    lines = [f"| default preset's data and budget; {int(q.sum())} queries vs {int((~q).sum())} database images "
             f"of the held-out classes | mAP (whole ranking) | mAP@100 | precision within radius 2 |",
             "| --- | --- | --- | --- |"]
    for bits in (16, 32, 48, 64):
        rows = []
        for seed in seeds:
            sets = common + ["model.head=hash", f"model.code_bits={bits}", "whitening.enabled=false",
                             f"train.seed={seed}", f"sampler.seed={seed}"]
            if margin is not None:
                sets.append(f"loss.margin={margin}")
            _, emb = _held_out_run(config.load("default", sets), root / f"{bits}_{seed}")
            codes = pack_codes(emb)
            rows.append(hamming_map(codes[q], labels[q], codes[~q], labels[~q], top=100))
        cell = lambda k: f"{np.mean([r[k] for r in rows]):.3f} +- {np.std([r[k] for r in rows]):.3f}"  # noqa: E731
        lines.append(f"| hash {bits} bits | {cell('map')} | {cell('map@100')} | {cell('precision@r2')} |")
        print(lines[-1], flush=True)
    rows = []
    for seed in seeds:
        _, emb = _held_out_run(config.load("default", common + [f"train.seed={seed}", f"sampler.seed={seed}"]),
                               root / f"float_{seed}")
        rows.append(retrieval_metrics(emb, labels, similarity="cosine", query_mask=q, full_ranking=True)["map"])
    lines.append(f"| float embedding (default preset: 128-d, whitened, cosine) | {np.mean(rows):.3f} +- "
                 f"{np.std(rows):.3f} | | |")
    return lines


def fashion_database_query(per_class: int = 1000, queries_per_class: int = 100) -> Path:
    """Fashion-MNIST train (database) and test (queries) images as PNGs and a CSV list."""
    from PIL import Image

    root = peer_parity.CACHE / "data" / "fmnist_database_query"
    if (root / "list.csv").is_file():
        return root / "list.csv"
    tmp = root.with_name(root.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, prefix, n in (("train", "train", per_class), ("test", "t10k", queries_per_class)):
        images = peer_parity._read_idx(peer_parity.FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = peer_parity._read_idx(peer_parity.FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        for c in range(10):
            for i in np.flatnonzero(labels == c)[:n]:
                name = f"{split}_{i:05d}.png"
                Image.fromarray(images[i]).save(tmp / name)
                rows.append(f"{root / name},{c},{split}")
    (tmp / "list.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    os.replace(tmp, root)
    return root / "list.csv"


def papers_protocol(margin: float | None) -> list[str]:
    from tfsim import config
    from tfsim.evaluation import retrieval_metrics
    from tfsim.evaluation.metrics import query_mask
    from tfsim.training.task import load_split

    listing = fashion_database_query()
    root = Path(tempfile.mkdtemp(prefix="tfsim-hash-papers-"))
    common = ["data.source=list", f"data.path={listing}", "data.protocol=database_query", "export.enabled=false",
              "index.enabled=false", "eval.every_epoch=false", "eval.baselines=false"]
    lines = ["| Fashion-MNIST, 1,000 test queries vs a database of the 10,000 training images (same classes) "
             "| mAP (whole ranking) | mAP@100 | precision within radius 2 |", "| --- | --- | --- | --- |"]
    for bits in (16, 32, 48, 64):
        sets = common + ["model.head=hash", f"model.code_bits={bits}", "whitening.enabled=false"]
        if margin is not None:
            sets.append(f"loss.margin={margin}")
        metrics, _ = _held_out_run(config.load("default", sets), root / f"{bits}")
        h = metrics["hamming"]
        lines.append(f"| hash {bits} bits | {h['map']:.3f} | {h['map@100']:.3f} | {h['precision@r2']:.3f} |")
        print(lines[-1], flush=True)
    test = load_split(config.load("default", common)).test
    _, emb = _held_out_run(config.load("default", common), root / "float")
    full = retrieval_metrics(emb, test.labels, similarity="cosine", query_mask=query_mask(test.splits),
                             full_ranking=True)
    lines.append(f"| float embedding (default preset: 128-d, whitened, cosine) | {full['map']:.3f} | | |")
    return lines


def search_speed() -> list[tuple[str, float, float]]:
    from tfsim.index import float_search
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
    out.append(("Hamming, 1M x 64-bit codes (NumPy: XOR + bitwise_count, top-k by bisection on counts)",
                200 / (time.perf_counter() - start), codes.nbytes / 1e6))
    start = time.perf_counter()
    for i in range(0, 200, 50):
        s = q[i:i + 50] @ x.T
        np.argpartition(-s, 10, axis=1)[:, :10]
    out.append(("float exact, 1M x 128-d (matrix product + argpartition)", 200 / (time.perf_counter() - start),
                x.nbytes / 1e6))
    import tensorflow as tf
    from tfsim.index.hamming import code_words, tf_code_words, tf_hamming_topk
    words = tf.constant(code_words(codes))
    search = tf.function(lambda q: tf_hamming_topk(tf_code_words(q, 8), words, 10))
    search(tf.constant(q_codes[:2]))  # trace
    start = time.perf_counter()
    search(tf.constant(q_codes))
    out.append(("Hamming, TF ops (the `<name>_hamming` SavedModel's search)", 200 / (time.perf_counter() - start),
                codes.nbytes / 1e6))
    searcher, params = float_search.build(x, "cosine", num_neighbors=10)
    index = float_search.GalleryIndex(searcher, np.arange(n).astype(str), np.zeros(n, np.int32), ("c",), "cosine",
                                      params)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        index.search(q, 10)
        best = min(best, time.perf_counter() - start)
    out.append((f"ScaNN self-tuned (recall@10 {params['measured_recall']:.3f}), 1M x 128-d", 200 / best,
                float("nan")))
    return out


def _clustered_packed(n: int, centres: np.ndarray, flip: float, rng) -> np.ndarray:
    """`n` packed codes, each a random centre's bits with each bit flipped with probability `flip`
    (made 1M at a time: the unpacked bits of 10M codes would be 640 MB)."""
    from tfsim.index.hamming import pack_codes

    out = []
    for start in range(0, n, 1_000_000):
        m = min(1_000_000, n - start)
        bits = centres[rng.integers(0, len(centres), m)] ^ (rng.random((m, centres.shape[1])) < flip)
        out.append(pack_codes(bits.astype(np.int8) * 2 - 1))
    return np.concatenate(out)


def _best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def against_faiss(sizes=(1_000_000, 10_000_000), num_queries: int = 1000) -> list[str]:
    """tfsim's Hamming search against faiss's exact binary search, and the inverted file's recall.

    64-bit codes near 10,000 random centres (each bit flipped with probability 0.15: codes with
    neighbourhoods, as a hashing model's are), `num_queries` new codes of the same centres, k = 10.
    Rows: the NumPy reference (`hamming_topk`, 200 queries), faiss's `IndexBinaryFlat` on one thread
    and on all threads, the index's exact searcher (`HammingSearcher`: faiss, then each result in
    (distance, row) order), and the inverted file `build_hamming` makes above `hamming_exact_below`
    (tuned to recall@10 0.95 on gallery codes; its recall here is measured on the new queries,
    counting codes tied at the exact 10th distance as found).
    """
    import faiss
    from tfsim.index.hamming import HammingSearcher, build_from_codes, hamming_topk

    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2, (10_000, 64), dtype=np.uint8)
    lines = [f"\n| {num_queries:,} queries, k=10, 64-bit codes | codes | queries/s | vs faiss (1 thread) | "
             "recall@10 | top-10 distances as faiss's |", "| --- | --- | --- | --- | --- | --- |"]
    threads = faiss.omp_get_max_threads()
    for n in sizes:
        db = _clustered_packed(n, centres, 0.15, rng)
        queries = _clustered_packed(num_queries, centres, 0.15, rng)
        flat = faiss.IndexBinaryFlat(64)
        flat.add(db)
        faiss.omp_set_num_threads(1)
        one = num_queries / _best_of(lambda: flat.search(queries, 10))
        want, _ = flat.search(queries, 10)
        faiss.omp_set_num_threads(threads)
        every = num_queries / _best_of(lambda: flat.search(queries, 10))

        def row(label, qps, recall="1 (exact)", same=""):
            lines.append(f"| {label} | {n:,} | {qps:,.0f} | {qps / one:.2f}x | {recall} | {same} |")

        start = time.perf_counter()
        _, ref = hamming_topk(queries[:200], db, 10)
        row("tfsim NumPy reference (`hamming_topk`, XOR + bitwise_count, bisection)",
            200 / (time.perf_counter() - start), same=str(bool((ref == want[:200]).all())))
        row("faiss IndexBinaryFlat, 1 thread", one)
        row(f"faiss IndexBinaryFlat, {threads} threads", every)
        exact = HammingSearcher(db)
        faiss.omp_set_num_threads(1)
        qps = num_queries / _best_of(lambda: exact.search_codes(queries, 10))
        got = exact.search_codes(queries, 10)[1]
        row("tfsim index, exact (faiss + (distance, row) order), 1 thread", qps, same=str(bool((got == want).all())))
        faiss.omp_set_num_threads(threads)
        qps = num_queries / _best_of(lambda: exact.search_codes(queries, 10))
        row(f"tfsim index, exact, {threads} threads", qps)
        start = time.perf_counter()
        ivf, params = build_from_codes(db, exact_below=0, target_recall=0.95)
        built = time.perf_counter() - start
        for t, label in ((1, "1 thread"), (threads, f"{threads} threads")):
            faiss.omp_set_num_threads(t)
            qps = num_queries / _best_of(lambda: ivf.search_codes(queries, 10))
            dist = ivf.search_codes(queries, 10)[1]
            recall = float(np.minimum((dist <= want[:, -1:]).sum(axis=1), 10).mean() / 10)
            row(f"tfsim index, inverted file ({params['num_lists']:,} lists, {params['num_lists_to_search']} "
                f"searched; tuned recall {params['measured_recall']:.3f}, built in {built:.0f} s), {label}",
                qps, f"{recall:.3f}")
        faiss.omp_set_num_threads(threads)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="search,faiss,margins,lengths,papers")
    p.add_argument("--faiss-sizes", default="1000000,10000000", help="faiss: gallery sizes")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--margins", default="0.25,0.5,1,1.41")
    p.add_argument("--margin", type=float, default=None, help="lengths: loss.margin (default: the preset's)")
    args = p.parse_args()
    logging.getLogger("tfsim").setLevel(logging.WARNING)
    parts, seeds = args.parts.split(","), [int(s) for s in args.seeds.split(",")]
    if "search" in parts:
        speed = search_speed()
        print("\n| search (200 queries, k=10) | queries/s | gallery MB |")
        print("| --- | --- | --- |")
        for label, qps, mb in speed:
            print(f"| {label} | {qps:,.0f} | {mb:,.0f} |")
        print(f"Hamming vs float exact: {speed[0][1] / speed[1][1]:.1f}x the queries/s, "
              f"{speed[1][2] / speed[0][2]:.0f}x less memory", flush=True)
    if "faiss" in parts:
        print("\n".join(against_faiss(tuple(int(n) for n in args.faiss_sizes.split(",")))), flush=True)
    if "margins" in parts:
        print("\n" + "\n".join(margins(seeds, [float(m) for m in args.margins.split(",")])), flush=True)
    if "lengths" in parts:
        print("\n" + "\n".join(code_lengths(seeds, args.margin)), flush=True)
    if "papers" in parts:
        print("\n" + "\n".join(papers_protocol(args.margin)), flush=True)


if __name__ == "__main__":
    main()
