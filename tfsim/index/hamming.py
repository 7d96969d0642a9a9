"""Hamming search: binary codes of a hashing model (`model.head=hash`), searched exactly.

    relaxed codes [N, bits] in (-1, 1) (a tanh head)
      -> `pack_codes`: sign -> bits (1 for >= 0), packed 8 per byte, big-endian within a byte
         (`np.packbits`): uint8 [N, bits / 8]
      -> `hamming_distances`: XOR of 64-bit words + `np.bitwise_count`, blockwise over queries
      -> `hamming_topk`: exact top-k (bisection on counts), ties by the lower database row
      -> `tf_hamming_topk`: the same with TF ops on int64 words (`tf.bitwise.bitwise_xor`,
         `tf.raw_ops.PopulationCount`, `tf.math.top_k`), for the retrieval SavedModel
      -> `HammingSearcher` / `build_hamming`: the index's searcher of a gallery's packed codes
      -> `hamming_map`: mAP over the whole Hamming ranking (ties by row, as the search ranks),
         mAP@k and precision within Hamming radius r, with a database / query protocol;
         `hamming_metrics`: the ones the train and evaluate commands report

Memory of the search: about 256 MB for one block of `[block, G]` distances and the XOR and
popcount temporaries of one 64-bit word column (the codes themselves are bits / 8 bytes
each: 1M x 64-bit codes are 8 MB).
"""

from __future__ import annotations

import os
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


class HammingSearcher:
    """Exact Hamming search over packed binary codes (`tfsim.index.hamming`), with the parts of
    ScaNN's searcher interface the index uses: `search_batched` (relaxed query codes in; rows
    and negated Hamming distances out, nearest first, ties by row), `serialize`, `size`, and
    `searcher.upsert` for additions."""

    def __init__(self, codes: np.ndarray):
        self.codes = np.asarray(codes, np.uint8)
        self.searcher = self  # (`add_to_index` calls `searcher.searcher.upsert`, as for ScaNN)

    def search_batched(self, queries, final_num_neighbors=10, **scann_only):
        rows, dist = hamming_topk(pack_codes(np.asarray(queries)), self.codes, final_num_neighbors)
        return rows, -dist.astype(np.float32)

    def upsert(self, indices, vectors, batch_size=1):
        """Appends the codes of `vectors` (relaxed codes) as new rows (ScaNN's signature; `indices`
        and `batch_size` unused)."""
        self.codes = np.concatenate([self.codes, pack_codes(np.asarray(vectors))])

    def size(self) -> int:
        return int(len(self.codes))

    def serialize(self, directory: str) -> None:
        np.save(Path(directory) / "codes.npy", self.codes)

    @classmethod
    def load(cls, directory: os.PathLike) -> "HammingSearcher":
        return cls(np.load(Path(directory) / "codes.npy"))


def build_hamming(relaxed: np.ndarray) -> tuple[HammingSearcher, dict]:
    """A Hamming index of `[G, bits]` relaxed codes (a `model.head=hash` export's embeddings)."""
    codes = pack_codes(relaxed)
    return HammingSearcher(codes), {"mode": "hamming", "code_bits": int(codes.shape[1] * 8), "size": len(codes),
                                    "dim": int(np.asarray(relaxed).shape[1]), "num_neighbors": 10,
                                    "bytes_per_item": int(codes.shape[1])}


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
