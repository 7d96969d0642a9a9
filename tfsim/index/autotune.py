"""Self-tuning of a ScaNN tree searcher: the fastest search settings that reach a target recall.

`tune_search` measures recall@k against exact search (`tfsim.evaluation.exact_knn`) on a seeded
sample of gallery vectors used as queries, each with itself excluded, and times each setting it
tries; `tfsim.index.float_search.build` runs it and records what it measured.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from tfsim.evaluation.knn import exact_knn

def _exact_neighbours(db: np.ndarray, rows: np.ndarray, k: int, measure: str) -> np.ndarray:
    """`[S, k]` exact nearest gallery rows of the gallery rows `rows`, each row itself excluded."""
    similarity = "dot" if measure == "dot_product" else "squared-L2"  # db is already prepared
    block = max(1, (1 << 26) // len(db))  # ~256 MB of scores at a time
    found = exact_knn(db[rows], db, k + 1, similarity, block_size=block).indices
    return _drop_self(found, rows, k)


def _drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first k of each row of `found` other than the query's own row, -1 where a row has fewer
    (ScaNN pads a search that found fewer than asked with repeats of row 0)."""
    out = np.full((len(rows), k), -1, np.int64)
    for i, (row, own) in enumerate(zip(found, rows)):
        kept = [r for r in dict.fromkeys(row.tolist()) if r != own][:k]
        out[i, :len(kept)] = kept
    return out


MAX_REORDER_FACTOR = 1024  # the deepest re-scoring the tuner tries: k x this


def _timed_search(searcher, queries: np.ndarray, k: int, leaves: int, reorder: int) -> tuple[np.ndarray, float]:
    """Neighbour rows and the best-of-2 wall time of one batched search."""
    best, rows = float("inf"), None
    for _ in range(2):
        start = time.perf_counter()
        rows, _ = searcher.search_batched(queries, final_num_neighbors=k, leaves_to_search=leaves,
                                          pre_reorder_num_neighbors=reorder)
        best = min(best, time.perf_counter() - start)
    return rows, best


def tune_search(searcher, db: np.ndarray, k: int, num_leaves: int, target_recall: float,
                measure: str, sample: int = 1000, seed: int = 0, leaves_to_search: int = 0,
                reorder: int = 0) -> dict:
    """The fastest search settings of a tree searcher that reach `target_recall` at k.

    Recall@k is measured against exact search on a seeded sample of gallery vectors used as
    queries, each with itself excluded (queries from the gallery's own distribution), and each
    setting tried is timed on that sample. Re-scoring depths (`reorder` if given, else
    k x {16, 8, 4, 2, 1}, then, if none reaches the target, k x {32, 64, ..., 1024} up to the
    gallery's size until one does) are tried deepest first; for each, the fewest leaves to search that reach
    the target (`leaves_to_search` if given) are found by doubling from the previous depth's
    answer (a shallower re-scoring never needs fewer leaves), then bisecting. A depth is given up
    when its settings get slower than the best one found, or its recall stops growing. The
    fastest setting that reaches the target wins; if none does, the one with the highest recall
    is kept and the result says so.

    Returns:
        {"num_leaves_to_search", "reorder", "measured_recall", "queries_per_second" (on the
        sample, one thread), "target_recall", "target_met", "sample", "tried": [...]}.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(db), min(sample, len(db)), replace=False))
    queries = db[rows]
    truth = _exact_neighbours(db, rows, k, measure)
    k_search = min(k + 1, len(db))
    tried: dict = {}

    def probe(leaves: int, depth: int) -> tuple[float, float]:
        """(recall, seconds) of one setting on the sample."""
        if (leaves, depth) not in tried:
            found, seconds = _timed_search(searcher, queries, k_search, leaves, max(depth, k_search))
            found = _drop_self(found.astype(np.int64), rows, k)
            hits = sum(len(set(a) & set(b)) for a, b in zip(found, truth))
            tried[leaves, depth] = (hits / truth.size, seconds)
        return tried[leaves, depth]

    best: Optional[tuple[int, int]] = None  # the fastest setting reaching the target so far

    def slower_than_best(setting: tuple[int, int]) -> bool:
        return best is not None and tried[setting][1] > tried[best][1]

    def fewest_leaves(depth: int, lower: int) -> Optional[int]:
        """The fewest leaves (from `lower`) reaching the target at `depth`, or None."""
        leaves, previous = lower, -1.0
        while True:
            got, _ = probe(leaves, depth)
            if got >= target_recall or leaves_to_search or slower_than_best((leaves, depth)):
                break
            if leaves >= num_leaves or got - previous < 0.001:  # this depth's recall has stopped growing
                break
            previous, leaves = got, min(2 * leaves, num_leaves)
        if probe(leaves, depth)[0] < target_recall:
            return None
        lo, hi = max(lower, leaves // 2), leaves  # bisect: fewest leaves in (lo, hi] reaching the target
        if probe(lo, depth)[0] >= target_recall:
            hi = lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if probe(mid, depth)[0] >= target_recall:
                hi = mid
            else:
                lo = mid
        return hi

    depths = [reorder] if reorder else sorted({max(k, k * m) for m in (1, 2, 4, 8, 16)}, reverse=True)
    lower = leaves_to_search or 1
    for depth in depths:
        leaves = fewest_leaves(depth, lower)
        if leaves is None:
            continue
        if best is None or tried[leaves, depth][1] < tried[best][1]:
            best = (leaves, depth)
        lower = leaves
    # Nothing reached the target: re-score deeper (near-duplicate clusters need the whole
    # cluster re-scored), doubling up to k x 1024 or the gallery, until a depth does.
    cap = min(len(db), k * MAX_REORDER_FACTOR)
    deeper = [d for d in (k * 2 ** e for e in range(5, 11)) if d < cap] + [cap]
    for depth in deeper if best is None and not reorder and cap > max(depths) else []:
        leaves = fewest_leaves(depth, leaves_to_search or 1)
        if leaves is not None:
            best = (leaves, depth)
            break
    choice = best or max(tried, key=lambda c: (tried[c][0], -tried[c][1]))
    measured, seconds = tried[choice]
    return {"num_leaves_to_search": int(choice[0]), "reorder": int(max(choice[1], k_search)),
            "measured_recall": float(measured), "queries_per_second": float(len(rows) / max(seconds, 1e-9)),
            "target_recall": float(target_recall), "target_met": best is not None,
            "sample": int(len(rows)),
            "tried": [{"num_leaves_to_search": a, "reorder": b, "recall": r, "seconds": t}
                      for (a, b), (r, t) in sorted(tried.items())]}
