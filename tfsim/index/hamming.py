"""Hamming search: binary codes of a hashing model (`model.head=hash`).

    relaxed codes [N, bits] in (-1, 1) (a tanh head)
      -> `pack_codes`: sign -> bits (1 for >= 0), packed 8 per byte, big-endian within a byte
         (`np.packbits`): uint8 [N, bits / 8]
      -> `hamming_distances`: XOR of 64-bit words + `np.bitwise_count`, blockwise over queries
      -> `hamming_topk`: exact top-k (bisection on counts), ties by the lower database row: the
         NumPy reference, and the search of code blocks in memory (metrics, tests)
      -> `tf_hamming_topk`: the same with TF ops on int64 words (`tf.bitwise.bitwise_xor`,
         `tf.raw_ops.PopulationCount`, `tf.math.top_k`), for the retrieval SavedModel
      -> `HammingSearcher` / `build_hamming`: the index's searcher of a gallery's packed codes, on
         faiss (the engine built for exactly this; the SavedModels keep the TF search and never
         need faiss): exact (`IndexBinaryFlat`) under `HAMMING_EXACT_BELOW` codes, above it an
         inverted file (`IndexBinaryIVF`) whose lists searched are tuned to a target recall
         (`tune_lists`), as the float index tunes its tree
      -> `hamming_map`: mAP over the whole Hamming ranking (ties by row, as the search ranks),
         mAP@k and precision within Hamming radius r, with a database / query protocol;
         `hamming_metrics`: the ones the train and evaluate commands report

Memory of `hamming_topk`: about 256 MB for one block of `[block, G]` distances and the XOR and
popcount temporaries of one 64-bit word column (the codes themselves are bits / 8 bytes
each: 1M x 64-bit codes are 8 MB).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import numpy as np


def pack_codes(relaxed: np.ndarray) -> np.ndarray:
    """`[N, bits]` real codes -> `[N, bits / 8]` uint8 (bit = code >= 0). `bits` must be a multiple of 8."""
    relaxed = np.asarray(relaxed)
    if relaxed.ndim != 2 or relaxed.shape[1] % 8:
        raise ValueError(f"Expected codes [N, bits] with bits a multiple of 8; got shape {relaxed.shape}.")
    return np.packbits(relaxed >= 0, axis=1)


def _words(codes: np.ndarray) -> np.ndarray:
    """Packed codes as uint64 words (zero-padded to a multiple of 8 bytes: XOR + popcount unchanged)."""
    codes = np.asarray(codes, np.uint8)
    pad = (-codes.shape[1]) % 8
    if pad:
        codes = np.pad(codes, ((0, 0), (0, pad)))
    return np.ascontiguousarray(codes).view(np.uint64)


def _distances(queries: np.ndarray, database: np.ndarray, dtype=np.int32) -> np.ndarray:
    queries, database = np.asarray(queries, np.uint8), np.asarray(database, np.uint8)
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"Codes of different lengths: {queries.shape[1]} and {database.shape[1]} bytes.")
    q, d = _words(queries), _words(database)
    out = np.zeros((len(q), len(d)), dtype)
    for word in range(q.shape[1]):  # one word column at a time: [Q, G] memory only
        out += np.bitwise_count(q[:, word, None] ^ d[None, :, word])
    return out


def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """`[Q, G]` int32 Hamming distances between packed codes (uint8 `[Q, B]`, `[G, B]`): XOR of
    64-bit words and `np.bitwise_count`."""
    return _distances(queries, database)


def _block(block_size: Optional[int], database_size: int, item_bytes: int = 4) -> int:
    """Queries per block: given, or about 256 MB of distances (`item_bytes` each) and of the
    uint64 XOR and uint8 popcount temporaries of one word column (9 bytes more per pair)."""
    return block_size or max(1, (1 << 28) // (item_bytes + 9) // max(database_size, 1))


def hamming_topk(queries: np.ndarray, database: np.ndarray, k: int,
                 block_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest database rows by Hamming distance, ties by the lower row (`block_size`
    queries at a time; default: about 256 MB of distances).

    Distances are small integers (uint8 up to 255 bits), so each query's k-th smallest distance t
    is found by bisection on `count(distance <= t) >= k` (a few vectorised passes, no sort of the
    database); the rows below t and the first rows at t (ascending: ties by the lower row) are
    the k, sorted stably by distance.

    Returns:
        `(rows int64 [Q, k], distances int32 [Q, k])`, nearest first.
    """
    k = min(int(k), len(database))
    if len(queries) == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.int32)
    bits = np.asarray(database).shape[1] * 8
    dtype = np.uint8 if bits < 256 else np.uint16
    rows_out, dist_out = [], []
    block_size = _block(block_size, len(database), np.dtype(dtype).itemsize)
    for start in range(0, len(queries), block_size):
        d = _distances(queries[start:start + block_size], database, dtype)
        rows = np.empty((len(d), k), np.int64)
        for i, row in enumerate(d):
            lo, hi = 0, bits  # the smallest t with at least k rows at distance <= t
            while lo < hi:
                mid = (lo + hi) // 2
                if np.count_nonzero(row <= mid) >= k:
                    hi = mid
                else:
                    lo = mid + 1
            below = np.flatnonzero(row < lo)
            chosen = np.concatenate([below, np.flatnonzero(row == lo)[:k - len(below)]])
            rows[i] = chosen[np.argsort(row[chosen], kind="stable")]
        rows_out.append(rows)
        dist_out.append(np.take_along_axis(d, rows, axis=1).astype(np.int32))
    return np.concatenate(rows_out), np.concatenate(dist_out)


def code_words(codes: np.ndarray) -> np.ndarray:
    """Packed codes `[N, B]` uint8 as int64 words `[N, ceil(B / 8)]` (zero-padded): the form
    `tf_hamming_topk` searches (a SavedModel variable)."""
    return _words(codes).view(np.int64)


def tf_code_words(codes, num_bytes: Optional[int] = None):
    """`code_words` with TF ops: uint8 `[N, B]` -> int64 `[N, ceil(B / 8)]` (`num_bytes`: B, when
    the tensor's static shape does not say it)."""
    import tensorflow as tf  # lazy: the NumPy search and metrics run without TensorFlow

    if num_bytes is not None:
        codes = tf.ensure_shape(codes, [None, num_bytes])
    pad = (-codes.shape[-1]) % 8
    codes = tf.pad(codes, [[0, 0], [0, pad]]) if pad else codes
    return tf.bitcast(tf.reshape(codes, [tf.shape(codes)[0], -1, 8]), tf.int64)


def tf_hamming_topk(query_words, database_words, k: int):
    """`hamming_topk` with TF ops over int64 words (`tf_code_words` / `code_words`), one query at
    a time (`[G, W]` memory): `(rows int32 [Q, k], distances int32 [Q, k])`, also for Q = 0.
    `tf.math.top_k` keeps the lower index first among equal values, so ties break as in NumPy.
    The database's size must be static (a variable or constant)."""
    import tensorflow as tf  # lazy: the NumPy search and metrics run without TensorFlow

    k = min(int(k), int(database_words.shape[0]))

    def one(words):
        xor = tf.bitwise.bitwise_xor(database_words, words[None, :])
        distances = tf.reduce_sum(tf.cast(tf.raw_ops.PopulationCount(x=xor), tf.int32), axis=1)
        top = tf.math.top_k(-distances, k=k)
        return top.indices, -top.values

    spec = tf.TensorSpec([k], tf.int32)
    return tf.map_fn(one, query_words, fn_output_signature=(spec, spec))


HAMMING_EXACT_BELOW = 10_000_000  # galleries of fewer codes are searched exactly (see `build_hamming`)
TRAINING_PER_LIST = 64  # codes per list the inverted file's k-means is trained on (at most the gallery)


def _faiss():
    """faiss, imported when a searcher is made (the metrics and the TF search do not need it)."""
    import faiss  # lazy: only the index's searcher needs faiss (the metrics and the TF search do not)
    return faiss


def _tie_order(rows: np.ndarray, dist: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row of a faiss result sorted by (distance, database row); missing results (-1) last."""
    key = np.where(rows < 0, np.iinfo(np.int64).max, dist.astype(np.int64) * (size + 1) + rows)
    order = np.argsort(key, axis=1, kind="stable")
    return np.take_along_axis(rows, order, 1), np.take_along_axis(dist, order, 1)


class HammingSearcher:
    """Hamming search over packed binary codes, on faiss (`IndexBinaryFlat`: exact, or
    `IndexBinaryIVF`: an inverted file of `centroids` with each code's list in `lists`), with
    the parts of ScaNN's searcher interface the index uses: `search_batched` (relaxed query
    codes in; rows and negated Hamming distances out, nearest first, ties by the lower row),
    `serialize`, `size`, and `searcher.upsert` for additions.

    faiss keeps, among codes at the same distance, the first it scans (the lower row; an
    inverted file scans each list in row order), and each result is sorted by (distance, row):
    the exact search returns what `hamming_topk` returns. (An inverted file scans list by list:
    among codes tied at its k-th distance it keeps the first lists', not the lowest rows.) A
    query whose searched lists hold fewer than k codes is searched again exactly (`hamming_topk`).
    The folder holds plain arrays (`codes.npy`, and `centroids.npy`, `lists.npy` for an
    inverted file), never a faiss file: the faiss index is rebuilt from them when loaded.
    """

    def __init__(self, codes: np.ndarray, centroids: Optional[np.ndarray] = None,
                 lists: Optional[np.ndarray] = None, lists_to_search: int = 1):
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.dtype != np.uint8 or codes.shape[1] == 0:
            raise ValueError(f"Expected packed codes uint8 [N, bytes]; got {codes.dtype} {codes.shape}.")
        self.codes = np.ascontiguousarray(codes)
        self.bits = int(codes.shape[1] * 8)
        self.searcher = self  # (`add_to_index` calls `searcher.searcher.upsert`, as for ScaNN)
        faiss = _faiss()
        self.centroids, self.lists, self.lists_to_search = None, None, 1
        if centroids is None:
            self.index = faiss.IndexBinaryFlat(self.bits)
            self.index.add(self.codes)
            return
        centroids, lists = np.asarray(centroids), np.asarray(lists)
        if centroids.ndim != 2 or centroids.dtype != np.uint8 or centroids.shape[1] != codes.shape[1] \
                or len(centroids) == 0:
            raise ValueError(f"Expected list centroids uint8 [num_lists, {codes.shape[1]}]; got "
                             f"{centroids.dtype} {centroids.shape}.")
        if lists.shape != (len(codes),) or lists.dtype != np.int64 or (
                len(lists) and not 0 <= lists.min() <= lists.max() < len(centroids)):
            raise ValueError(f"Expected one list number in [0, {len(centroids)}) per code (int64 [{len(codes)}]); "
                             f"got {lists.dtype} {lists.shape}.")
        self.centroids, self.lists = np.ascontiguousarray(centroids), np.ascontiguousarray(lists)
        self.lists_to_search = min(max(int(lists_to_search), 1), len(centroids))
        self._quantizer = faiss.IndexBinaryFlat(self.bits)  # (kept: the inverted file does not own it)
        self._quantizer.add(self.centroids)
        self.index = faiss.IndexBinaryIVF(self._quantizer, self.bits, len(self.centroids))
        self.index.is_trained = True
        self._add_to_lists(self.codes, self.lists)

    def _add_to_lists(self, codes: np.ndarray, lists: np.ndarray) -> None:
        faiss = _faiss()
        if len(codes):
            self.index.add_core(len(codes), faiss.swig_ptr(codes), None, faiss.swig_ptr(lists))

    @property
    def num_lists(self) -> int:
        return 0 if self.centroids is None else len(self.centroids)

    def search_codes(self, queries: np.ndarray, k: int, lists_to_search: Optional[int] = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """`(rows int64 [Q, k], distances int32 [Q, k])` of packed query codes, nearest first, ties
        by the lower row (`lists_to_search`: the inverted file's lists searched; default: the
        tuned number)."""
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] * 8 != self.bits or queries.dtype != np.uint8:
            raise ValueError(f"Expected packed query codes uint8 [Q, {self.bits // 8}]; got {queries.dtype} "
                             f"{queries.shape}.")
        if int(k) < 0:
            raise ValueError(f"Expected k >= 0 neighbours; got {k}.")
        queries = np.ascontiguousarray(queries)
        k = min(int(k), len(self.codes))
        if len(queries) == 0 or k == 0:
            return np.zeros((len(queries), k), np.int64), np.zeros((len(queries), k), np.int32)
        faiss = _faiss()
        if self.centroids is None:
            dist, rows = self.index.search(queries, k)
        else:
            probe = min(max(int(lists_to_search or self.lists_to_search), 1), self.num_lists)
            dist, rows = self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=probe))
            rows, dist = _tie_order(rows.astype(np.int64), dist, len(self.codes))
            short = (rows < 0).any(axis=1)  # its lists held fewer than k codes: an exact search
            if short.any():
                rows[short], dist[short] = hamming_topk(queries[short], self.codes, k)
            return rows, dist.astype(np.int32)
        rows, dist = _tie_order(rows.astype(np.int64), dist, len(self.codes))
        return rows, dist.astype(np.int32)

    def search_batched(self, queries, final_num_neighbors=10, lists_to_search: Optional[int] = None, **scann_only):
        rows, dist = self.search_codes(pack_codes(np.asarray(queries)), final_num_neighbors, lists_to_search)
        return rows, -dist.astype(np.float32)

    def upsert(self, indices, vectors, batch_size=1):
        """Appends the codes of `vectors` (relaxed codes) as new rows (ScaNN's signature; `indices`
        and `batch_size` unused); an inverted file puts each in its nearest list (no retraining)."""
        codes = np.ascontiguousarray(pack_codes(np.asarray(vectors)))
        if self.centroids is None:
            self.index.add(codes)
        else:
            lists = self._quantizer.search(codes, 1)[1].ravel().astype(np.int64) if len(codes) else \
                np.zeros(0, np.int64)
            self._add_to_lists(codes, np.ascontiguousarray(lists))
            self.lists = np.concatenate([self.lists, lists])
        self.codes = np.concatenate([self.codes, codes])

    def size(self) -> int:
        return int(len(self.codes))

    def serialize(self, directory: str) -> None:
        np.save(Path(directory) / "codes.npy", self.codes)
        if self.centroids is not None:
            np.save(Path(directory) / "centroids.npy", self.centroids)
            np.save(Path(directory) / "lists.npy", self.lists)

    @classmethod
    def load(cls, directory: os.PathLike, params: dict) -> "HammingSearcher":
        """The searcher `serialize` wrote, as the index's `params` describe it (its "engine",
        "code_bits", "num_lists", "num_lists_to_search"): plain arrays (`np.load` refuses pickles),
        checked against them before faiss allocates anything.

        Raises:
            ValueError: arrays that are not what `params` describe (faiss allocates per list: a
                folder naming millions of lists for a few codes would exhaust memory).
        """
        directory = Path(directory)
        codes = np.load(directory / "codes.npy")
        if codes.ndim != 2 or codes.shape[1] * 8 != params.get("code_bits"):
            raise ValueError(f"Expected codes [N, {params.get('code_bits')} / 8]; got shape {codes.shape}.")
        if params.get("engine", "exact") == "exact":
            return cls(codes)
        centroids = np.load(directory / "centroids.npy")
        num_lists = params.get("num_lists")
        if len(centroids) != num_lists or not 1 <= num_lists <= max(1, len(codes)):
            raise ValueError(f"Expected {num_lists} list centroids, at most one per code ({len(codes)}); got "
                             f"{len(centroids)}.")
        return cls(codes, centroids, np.load(directory / "lists.npy"), params.get("num_lists_to_search", 1))


def _tie_aware_recall(searcher: HammingSearcher, rows: np.ndarray, k: int, truth_kth: np.ndarray,
                      lists_to_search: int) -> tuple[float, float]:
    """(recall@k, best-of-2 seconds) of the inverted file searching `lists_to_search` lists for the
    gallery codes `rows`, each itself excluded. A neighbour counts when its distance is at most
    the query's exact k-th distance: codes at the same distance are equally right answers."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        found, dist = searcher.search_codes(searcher.codes[rows], k + 1, lists_to_search)
        best = min(best, time.perf_counter() - start)
    hits = 0
    for own, found_rows, found_dist, kth in zip(rows, found, dist, truth_kth):
        others = found_dist[found_rows != own][:k]
        hits += min(int(np.count_nonzero(others <= kth)), k)
    return hits / (len(rows) * k), best


def tune_lists(searcher: HammingSearcher, k: int, target_recall: float, sample: int = 1000, seed: int = 0) -> dict:
    """The fewest lists of an inverted file to search for recall@k >= `target_recall` against
    exact search, on a seeded sample of gallery codes used as queries (each itself excluded;
    recall counts ties at the k-th distance as found): doubling from 1, then bisecting (recall
    grows with the lists searched; all lists is exact).

    Returns:
        {"num_lists_to_search", "measured_recall", "queries_per_second" (on the sample),
        "target_recall", "sample", "tried": [{"num_lists_to_search", "recall", "seconds"}]}.
    """
    g = searcher.size()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(g, min(sample, g), replace=False))
    k = min(k, g - 1)
    if k < 1:
        return {"num_lists_to_search": searcher.num_lists, "measured_recall": 1.0, "queries_per_second": 0.0,
                "target_recall": float(target_recall), "sample": int(len(rows)), "tried": []}
    exact, dist = searcher.search_codes(searcher.codes[rows], k + 1, searcher.num_lists)  # every list: exact
    kth = np.array([d[r != own][:k][-1] for own, r, d in zip(rows, exact, dist)])
    tried: dict = {}

    def probe(n: int) -> float:
        if n not in tried:
            tried[n] = _tie_aware_recall(searcher, rows, k, kth, n)
        return tried[n][0]

    n, failed = 1, 0  # `failed`: the most lists known to miss the target
    while probe(n) < target_recall and n < searcher.num_lists:
        n, failed = min(2 * n, searcher.num_lists), n
    lo, hi = failed, n  # the fewest in (lo, hi] reaching the target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid) >= target_recall:
            hi = mid
        else:
            lo = mid
    recall, seconds = tried[hi]
    return {"num_lists_to_search": int(hi), "measured_recall": float(recall),
            "queries_per_second": float(len(rows) / max(seconds, 1e-9)), "target_recall": float(target_recall),
            "sample": int(len(rows)),
            "tried": [{"num_lists_to_search": a, "recall": r, "seconds": t} for a, (r, t) in sorted(tried.items())]}


def build_hamming(relaxed: np.ndarray, num_neighbors: int = 10, target_recall: float = 0.95,
                  exact_below: int = HAMMING_EXACT_BELOW, num_lists: int = 0, tuning_sample: int = 1000,
                  seed: int = 0) -> tuple[HammingSearcher, dict]:
    """A Hamming index of `[G, bits]` relaxed codes (a `model.head=hash` export's embeddings):
    `build_from_codes` of their packed codes."""
    return build_from_codes(pack_codes(relaxed), num_neighbors, target_recall, exact_below, num_lists,
                            tuning_sample, seed)


def build_from_codes(codes: np.ndarray, num_neighbors: int = 10, target_recall: float = 0.95,
                     exact_below: int = HAMMING_EXACT_BELOW, num_lists: int = 0, tuning_sample: int = 1000,
                     seed: int = 0) -> tuple[HammingSearcher, dict]:
    """A Hamming index of packed codes uint8 `[G, bits / 8]`.

    Galleries under `exact_below` codes (and no `num_lists` asked for) are searched exactly
    (faiss's `IndexBinaryFlat`: about 2,000 queries/s per core over 1M 64-bit codes). Larger ones
    get an inverted file (`IndexBinaryIVF`) of `num_lists` lists (0: sqrt(G)), its k-means trained
    on a seeded sample of `TRAINING_PER_LIST` codes per list, and tune the lists searched to reach
    `target_recall` at `num_neighbors` (`tune_lists`), as the float index tunes its tree.

    Returns:
        `(searcher, params)`: params["mode"] is "hamming", params["engine"] "exact" or "ivf"
        (with "num_lists", "num_lists_to_search" and what the tuning measured).
    """
    codes = np.asarray(codes)
    if len(codes) == 0:
        raise ValueError("Expected a non-empty gallery of codes; got 0 codes.")
    if not 0 < target_recall <= 1:
        raise ValueError(f"Invalid target_recall {target_recall}: expected a recall in (0, 1], e.g. 0.95.")
    params = {"mode": "hamming", "code_bits": int(codes.shape[1] * 8), "size": len(codes),
              "dim": int(codes.shape[1] * 8), "num_neighbors": int(num_neighbors),
              "bytes_per_item": int(codes.shape[1])}
    if len(codes) < exact_below and not num_lists:
        return HammingSearcher(codes), {**params, "engine": "exact"}
    faiss = _faiss()
    start = time.perf_counter()
    n_lists = int(min(num_lists or max(1, round(np.sqrt(len(codes)))), len(codes)))
    rng = np.random.default_rng(seed)
    sample = codes[np.sort(rng.choice(len(codes), min(len(codes), TRAINING_PER_LIST * n_lists), replace=False))]
    quantizer = faiss.IndexBinaryFlat(params["code_bits"])
    trainer = faiss.IndexBinaryIVF(quantizer, params["code_bits"], n_lists)
    trainer.train(np.ascontiguousarray(sample))
    centroids = quantizer.reconstruct_n(0, n_lists)
    lists = quantizer.search(codes, 1)[1].ravel().astype(np.int64)
    searcher = HammingSearcher(codes, centroids, np.ascontiguousarray(lists))
    tuning = tune_lists(searcher, num_neighbors, target_recall, tuning_sample, seed)
    searcher.lists_to_search = tuning.pop("num_lists_to_search")
    return searcher, {**params, "engine": "ivf", "num_lists": n_lists, "num_lists_to_search": searcher.lists_to_search,
                      "measured_recall": tuning.pop("measured_recall"),
                      "queries_per_second": tuning.pop("queries_per_second"), "target_recall": float(target_recall),
                      "build_seconds": time.perf_counter() - start, "tuning": tuning}


def hamming_map(query_codes: np.ndarray, query_labels: np.ndarray, db_codes: np.ndarray, db_labels: np.ndarray,
                top: Optional[int] = None, radius: int = 2, block_size: Optional[int] = None,
                exclude_self: bool = False) -> dict:
    """mAP of packed codes with a database / query protocol (queries are not in the database),
    or with `exclude_self` leave-one-out (the queries *are* the database rows, each one left
    out of its own ranking).

    Each query ranks the whole database by Hamming distance, ties by the lower row (as
    `hamming_topk`). Average precision over that ranking: `(1 / R) sum_i P(i) rel(i)` over the
    relevant items (same label; R = all relevant in the database); with `top`, over the first
    `top` results, divided by the relevant items among them (mAP@k as the hashing papers compute
    it). Precision within `radius`: relevant share of the items at distance <= radius (0 when none).
    Queries without any relevant database item are skipped.

    Returns:
        {"map", "map@<top>" (with top), "precision@r<radius>", "num_queries"}.
    """
    db_labels = np.asarray(db_labels)
    query_labels = np.asarray(query_labels)
    g = len(db_labels)
    sums = {"map": 0.0, "precision_radius": 0.0, "top": 0.0}
    count = 0
    # about 256 MB: int32 distances, int64 keys and orders, float64 precisions, ~40 bytes per pair
    block_size = block_size or max(1, (1 << 28) // 40 // max(g, 1))
    for start in range(0, len(query_codes), block_size):
        d = hamming_distances(query_codes[start:start + block_size], db_codes)
        key = d.astype(np.int64) * g + np.arange(g)[None, :]
        own = np.zeros(d.shape, bool)
        if exclude_self:  # each query ranks its own row last and never counts it
            own[np.arange(len(d)), np.arange(start, start + len(d))] = True
            key[own] = np.iinfo(np.int64).max
        order = np.argsort(key, axis=1)
        hits = (db_labels[order] == query_labels[start:start + len(d), None]) & ~np.take_along_axis(own, order, 1)
        relevant = hits.sum(axis=1)
        keep = relevant > 0
        ranks = np.arange(1, g + 1)
        precision = np.cumsum(hits, axis=1) / ranks
        sums["map"] += float(((precision * hits).sum(axis=1)[keep] / relevant[keep]).sum())
        if top:
            h = hits[:, :top]
            found = h.sum(axis=1)
            ap = np.where(found > 0, (precision[:, :top] * h).sum(axis=1) / np.maximum(found, 1), 0.0)
            sums["top"] += float(ap[keep].sum())
        within = (d <= radius) & ~own
        n_within = within.sum(axis=1)
        same = (db_labels[None, :] == query_labels[start:start + len(d), None]) & within
        sums["precision_radius"] += float(np.where(n_within > 0, same.sum(axis=1) / np.maximum(n_within, 1),
                                                   0.0)[keep].sum())
        count += int(keep.sum())
    out = {"map": sums["map"] / count if count else float("nan"),
           f"precision@r{radius}": sums["precision_radius"] / count if count else float("nan"),
           "num_queries": count}
    if top:
        out[f"map@{top}"] = sums["top"] / count if count else float("nan")
    return out


def hamming_metrics(relaxed: np.ndarray, labels: np.ndarray, queries: Optional[np.ndarray]) -> dict:
    """mAP (whole ranking), mAP@100 and precision within radius 2 of the packed codes of `relaxed`
    `[N, bits]`: the `queries` rows (bool `[N]`) against the others (query/gallery), or with
    `queries=None` each row against all others (leave-one-out)."""
    codes, labels = pack_codes(relaxed), np.asarray(labels)
    if queries is not None:
        return hamming_map(codes[queries], labels[queries], codes[~queries], labels[~queries], top=100)
    return hamming_map(codes, labels, codes, labels, top=100, exclude_self=True)
