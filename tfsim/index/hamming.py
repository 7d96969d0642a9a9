"""Binary codes and exact Hamming search (learning to hash, issue 15's first part).

    relaxed codes [N, bits] in (-1, 1) (a tanh head)
      -> `pack_codes`: sign -> bits (1 for >= 0), packed 8 per byte, big-endian within a byte
         (`np.packbits`): uint8 [N, bits / 8]
      -> `hamming_distances`: XOR + popcount (a 256-entry table), blockwise over queries
      -> `hamming_topk`: exact top-k, ties broken by the lower database row (deterministic)
      -> `tf_hamming_topk`: the same with TF ops (`tf.bitwise.bitwise_xor`,
         `tf.raw_ops.PopulationCount`, `tf.math.top_k`), for a SavedModel
      -> `hamming_map`: mAP over the whole Hamming ranking (ties by row, as the search ranks),
         mAP@k and precision within Hamming radius r, with a database / query protocol

Memory of the search: one block of `[block, G]` int32 distances (the codes themselves are
bits / 8 bytes each: 1M x 64-bit codes are 8 MB).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.int32)


def pack_codes(relaxed: np.ndarray) -> np.ndarray:
    """`[N, bits]` real codes -> `[N, bits / 8]` uint8 (bit = code >= 0). `bits` must be a multiple of 8."""
    relaxed = np.asarray(relaxed)
    if relaxed.ndim != 2 or relaxed.shape[1] % 8:
        raise ValueError(f"Expected codes [N, bits] with bits a multiple of 8; got shape {relaxed.shape}.")
    return np.packbits(relaxed >= 0, axis=1)


def unpack_codes(packed: np.ndarray) -> np.ndarray:
    """`[N, bytes]` uint8 -> `[N, 8 bytes]` of -1 / +1 (float32)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), axis=1)
    return bits.astype(np.float32) * 2 - 1


def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """`[Q, G]` int32 Hamming distances between packed codes (uint8 `[Q, B]`, `[G, B]`)."""
    queries, database = np.asarray(queries, np.uint8), np.asarray(database, np.uint8)
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"Codes of different lengths: {queries.shape[1]} and {database.shape[1]} bytes.")
    out = np.zeros((len(queries), len(database)), np.int32)
    for byte in range(queries.shape[1]):  # one byte column at a time: [Q, G] memory only
        out += _POPCOUNT[np.bitwise_xor(queries[:, byte, None], database[None, :, byte])]
    return out


def hamming_topk(queries: np.ndarray, database: np.ndarray, k: int,
                 block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest database rows by Hamming distance, ties by the lower row.

    Returns:
        `(rows int64 [Q, k], distances int32 [Q, k])`, nearest first.
    """
    k = min(int(k), len(database))
    rows_out, dist_out = [], []
    for start in range(0, len(queries), block_size):
        d = hamming_distances(queries[start:start + block_size], database)
        # One key orders by distance, then row: distance * G + row (no ties left).
        key = d.astype(np.int64) * len(database) + np.arange(len(database))[None, :]
        top = np.argpartition(key, k - 1, axis=1)[:, :k] if k < len(database) else np.tile(
            np.arange(len(database)), (len(d), 1))
        order = np.argsort(np.take_along_axis(key, top, axis=1), axis=1)
        rows = np.take_along_axis(top, order, axis=1)
        rows_out.append(rows.astype(np.int64))
        dist_out.append(np.take_along_axis(d, rows, axis=1))
    return np.concatenate(rows_out), np.concatenate(dist_out)


def tf_hamming_topk(queries, database, k: int):
    """`hamming_topk` with TF ops (uint8 tensors `[Q, B]`, `[G, B]`): `(rows int32, distances int32)`.
    `tf.math.top_k` keeps the lower index first among equal values, so ties break as in NumPy."""
    import tensorflow as tf

    xor = tf.bitwise.bitwise_xor(queries[:, None, :], database[None, :, :])
    distances = tf.reduce_sum(tf.cast(tf.raw_ops.PopulationCount(x=xor), tf.int32), axis=-1)
    top = tf.math.top_k(-distances, k=tf.minimum(k, tf.shape(database)[0]))
    return top.indices, -top.values


def hamming_map(query_codes: np.ndarray, query_labels: np.ndarray, db_codes: np.ndarray, db_labels: np.ndarray,
                top: Optional[int] = None, radius: int = 2, block_size: int = 1024, exclude_self: bool = False) -> dict:
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
