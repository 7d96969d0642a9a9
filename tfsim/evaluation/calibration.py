"""A similarity threshold for "same class?" decisions, calibrated on labelled data (what TF
Similarity's `calibrate` did, in tfsim's vocabulary of scores).

Pairs: each query with each of its `k` nearest gallery items (`k=1`: its nearest neighbour, TF
Similarity's `match_nearest`), leave-one-out by default (every item queries all the others), or
a query / gallery split; or pairs you bring (`calibrate_pairs`: scores and same-class flags, e.g. a
verification set). A pair is positive when both items share a label. A threshold t accepts a pair
("match") when its score is >= t, the score being tfsim's (`tfsim.distances`: larger is closer,
distances negated), the one `tfsim.index` and the retrieval SavedModels return. Over the pairs:

    precision(t) = positive pairs with score >= t / pairs with score >= t
    recall(t)    = positive pairs with score >= t / positive pairs
    f1(t)        = 2 precision(t) recall(t) / (precision(t) + recall(t))

The candidate thresholds are the pairs' distinct scores. With a target precision the threshold is
the lowest candidate whose precision reaches it (the largest recall among those that do, as TF
Similarity took the largest distance meeting a target); without one, the candidate of best F1
(the highest threshold among equal F1). The precision reported is the one reached on the pairs
calibrated on, so it is >= the target there; on other data it is an estimate, which
`evaluate_threshold` measures on other labelled pairs (the training pipeline: on its test classes).

Cost: the exact k-NN, blockwise over queries (bounded memory, `tfsim.evaluation.knn`), then one
sort of the Q x k pairs. Unlike TF Similarity: scores, not distances (no rounding of them); `k`
neighbours per query (the neighbours a retrieval model returns), not only the nearest.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from tfsim import distances
from tfsim.evaluation.knn import knn_blocks


class CalibrationCurve(NamedTuple):
    """Precision, recall and F1 at every candidate threshold (the pairs' distinct scores), highest
    threshold first; each is float64 `[T]` (`thresholds` float32: the scores)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """A calibrated threshold and what it reaches on the pairs it was calibrated on.

    Attributes:
        threshold: decide "same class" for a pair whose score is >= this.
        precision, recall, f1: at `threshold`, on the calibration pairs.
        target_precision: the precision asked for, or None (best F1).
        similarity: the score's name (`tfsim.distances`), or None for `calibrate_pairs`.
        k: neighbours per query paired (None for `calibrate_pairs`).
        num_queries: queries searched (None for `calibrate_pairs`).
        num_pairs, num_positive_pairs: pairs counted, and those of one class.
        curve: every candidate threshold's figures (`CalibrationCurve`).
    """

    threshold: float
    precision: float
    recall: float
    f1: float
    target_precision: Optional[float]
    similarity: Optional[str]
    k: Optional[int]
    num_queries: Optional[int]
    num_pairs: int
    num_positive_pairs: int
    curve: CalibrationCurve = dataclasses.field(repr=False)

    def matches(self, scores) -> np.ndarray:
        """bool, same shape as `scores`: `scores >= threshold`, compared in float32 (the scores'
        precision in tfsim's searches and SavedModels, and the threshold's: one of them)."""
        return np.asarray(scores, np.float32) >= np.float32(self.threshold)

    def to_dict(self) -> dict:
        """The figures as JSON-ready values (without the curve), with the rule they mean."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "curve"}
        out["rule"] = "match = score >= threshold"
        return out


def _check_precision(precision) -> Optional[float]:
    if precision is None:
        return None
    if isinstance(precision, bool) or not isinstance(precision, (int, float, np.floating, np.integer)) or not (
            0 < float(precision) <= 1):
        raise ValueError("Invalid value for `precision`: expected a target precision in (0, 1], e.g. 0.9, or None "
                         f"for the threshold of best F1. Received: precision={precision!r}")
    return float(precision)


def calibrate_pairs(scores, same_class, precision: Optional[float] = None) -> Calibration:
    """The threshold of labelled pairs you scored yourself (see module doc).

    Args:
        scores: float `[P]` pair scores, larger = closer.
        same_class: bool `[P]`: whether each pair is of one class.
        precision: target precision in (0, 1], or None for the best F1.

    Returns:
        A `Calibration` (its `similarity`, `k` and `num_queries` None).

    Raises:
        ValueError: mismatched lengths, non-finite scores, no positive pair, a target precision
            outside (0, 1] or that no threshold reaches (the message gives the highest precision
            reachable).

    Example:
        >>> round(calibrate_pairs([0.9, 0.8, 0.3], [True, True, False], precision=1.0).threshold, 4)
        0.8
    """
    target = _check_precision(precision)
    scores = np.asarray(scores, np.float32).reshape(-1)
    same = np.asarray(same_class, bool).reshape(-1)
    if len(scores) != len(same):
        raise ValueError(f"Invalid value for `same_class`: expected one flag per score ({len(scores)}). Received: "
                         f"{len(same)} flags")
    if not np.isfinite(scores).all():
        raise ValueError(f"Invalid value for `scores`: expected finite numbers. Received: "
                         f"{int((~np.isfinite(scores)).sum())} NaN or infinite scores (check the embeddings).")
    positives = int(same.sum())
    if positives == 0:
        raise ValueError(f"Cannot calibrate a threshold: none of the {len(same)} pairs is of one class, so no "
                         "threshold accepts a right one. Calibrate on more images per class (or a larger k).")
    # (No negative pair: every threshold is precise, and the lowest score keeps every pair.)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], same[order]
    last = np.append(ranked[1:] != ranked[:-1], True)  # the last pair of each distinct score
    tp = np.cumsum(hits, dtype=np.int64)[last]
    accepted = np.flatnonzero(last).astype(np.int64) + 1
    curve = CalibrationCurve(ranked[last], tp / accepted, tp / positives, 2 * tp / (accepted + positives))
    if target is None:
        best = int(np.argmax(curve.f1))  # the first maximum: the highest threshold among equal F1
    else:
        reach = np.flatnonzero(curve.precision >= target)
        if not len(reach):
            top = int(np.argmax(curve.precision))
            raise ValueError(
                f"No threshold reaches precision {target:g} on these {len(same)} pairs: the highest precision any "
                f"threshold reaches is {curve.precision[top]:.4f} (at threshold {float(curve.thresholds[top]):.6g}, "
                f"recall {curve.recall[top]:.4f}). Ask for a precision of at most that, or calibrate the best F1 "
                "(precision=None).")
        best = int(reach[-1])  # the lowest threshold reaching it: the largest recall that does
    return Calibration(threshold=float(curve.thresholds[best]), precision=float(curve.precision[best]),
                       recall=float(curve.recall[best]), f1=float(curve.f1[best]), target_precision=target,
                       similarity=None, k=None, num_queries=None, num_pairs=int(len(same)),
                       num_positive_pairs=positives, curve=curve)


def evaluate_threshold(scores, same_class, threshold: float) -> dict:
    """What the decision `score >= threshold` does on labelled pairs it was not calibrated on
    (e.g. the k-NN pairs of classes held out of calibration): how a threshold transfers.

    Args:
        scores: float `[P]` pair scores, larger = closer (compared in float32, as `Calibration.matches`).
        same_class: bool `[P]`: whether each pair is of one class.
        threshold: the score at or above which a pair is decided "same class".

    Returns:
        `{"precision", "recall", "accepted_share", "positive_pair_share", "num_pairs",
        "num_positive_pairs"}`: precision = positive accepted pairs / accepted pairs (None when
        no pair is accepted), recall = positive accepted pairs / positive pairs (None without a
        positive pair); `accepted_share` the share of pairs accepted, `positive_pair_share` the
        share of one class (the precision of accepting every pair).

    Example:
        >>> evaluate_threshold([0.9, 0.8, 0.3], [True, False, True], 0.5)["precision"]
        0.5
    """
    scores = np.asarray(scores, np.float32).reshape(-1)
    same = np.asarray(same_class, bool).reshape(-1)
    if len(scores) != len(same):
        raise ValueError(f"Invalid value for `same_class`: expected one flag per score ({len(scores)}). Received: "
                         f"{len(same)} flags")
    accepted = scores >= np.float32(threshold)
    tp, n_accepted, positives = int((accepted & same).sum()), int(accepted.sum()), int(same.sum())
    return {"precision": tp / n_accepted if n_accepted else None, "recall": tp / positives if positives else None,
            "accepted_share": n_accepted / len(same) if len(same) else None,
            "positive_pair_share": positives / len(same) if len(same) else None,
            "num_pairs": int(len(same)), "num_positive_pairs": positives}


def neighbour_pairs(embeddings, labels, k: int = 1, similarity: str = "cosine", gallery: Optional[tuple] = None,
                    query_mask=None, block_size: int = 1024) -> tuple[np.ndarray, np.ndarray, int]:
    """`(scores [Q * k], same_class [Q * k], queries)`: each query paired with its k nearest gallery
    items (leave-one-out, `query_mask` or `gallery` as in `calibrate`), exact and blockwise."""
    labels = np.asarray(labels).reshape(-1)
    x = np.asarray(embeddings)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"Invalid arguments: expected embeddings [N, D] and one label per row. Received: "
                         f"embeddings of shape {x.shape}, {len(labels)} labels")
    if not np.isfinite(x).all():
        raise ValueError("Invalid value for `embeddings`: expected finite numbers. Received: NaN or infinite "
                         "values (check the model).")
    if gallery is not None and query_mask is not None:
        raise ValueError("Invalid arguments: pass either `gallery` or `query_mask`, not both.")
    if gallery is not None:
        g, g_labels = np.asarray(gallery[0]), np.asarray(gallery[1]).reshape(-1)
        if g.ndim != 2 or len(g) != len(g_labels) or g.shape[1] != x.shape[1]:
            raise ValueError(f"Invalid value for `gallery`: expected (embeddings [G, {x.shape[1]}], labels [G]). "
                             f"Received: embeddings of shape {g.shape}, {len(g_labels)} labels")
        queries, query_labels = x, labels
    elif query_mask is not None:
        mask = np.asarray(query_mask, bool).reshape(-1)
        if len(mask) != len(labels):
            raise ValueError(f"Invalid value for `query_mask`: expected one flag per row ({len(labels)}). "
                             f"Received: {len(mask)} flags")
        queries, query_labels, g, g_labels = x[mask], labels[mask], x[~mask], labels[~mask]
    else:
        queries, query_labels, g, g_labels = x, labels, x, labels
    classes = np.unique(np.concatenate([query_labels, g_labels]))
    if len(classes) < 2:
        raise ValueError(f"Cannot calibrate a threshold on one class ({classes.tolist()}): every pair would be of "
                         "the same class. Expected labelled items of at least 2 classes.")
    leave_one_out = gallery is None and query_mask is None
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"Invalid value for `k`: expected an integer >= 1 (neighbours per query). Received: k={k!r}")
    if len(g) - leave_one_out < 1 or len(queries) < 1:
        raise ValueError(f"Cannot calibrate: {len(queries)} queries and {len(g) - leave_one_out} gallery items per "
                         "query. Expected at least one of each.")
    scores, same = [], []
    for start, block in knn_blocks(queries, g, k, similarity, exclude_self=leave_one_out, block_size=block_size):
        scores.append(block.scores.reshape(-1))
        same.append((g_labels[block.indices] == query_labels[start:start + len(block.indices), None]).reshape(-1))
    return np.concatenate(scores), np.concatenate(same), len(queries)


def calibrate(embeddings, labels, precision: Optional[float] = None, *, similarity: str = "cosine", k: int = 1,
              gallery: Optional[tuple] = None, query_mask=None, block_size: int = 1024) -> Calibration:
    """A similarity threshold for "same class?" decisions, from labelled embeddings (see module doc).

    Args:
        embeddings: float `[N, D]` (the queries, with `gallery`).
        labels: `[N]` class labels.
        precision: the target precision in (0, 1]: the lowest threshold reaching it on these
            pairs; None: the threshold of best F1.
        similarity: the score, a name in `tfsim.distances.DISTANCES` (as the index you search).
        k: each query is paired with its k nearest gallery items (1: TF Similarity's nearest
            neighbour; the k of your searches: every neighbour they return is decided on).
        gallery: `(embeddings [G, D], labels [G])`: the queries search it (not themselves).
        query_mask: bool `[N]`: these rows query the other rows (one set, In-Shop style).
        block_size: queries scored at once (memory: one block's `[block_size, G]` scores).

    Returns:
        A `Calibration`: `.threshold`, `.precision`, `.recall`, `.f1`, the pairs counted and
        the whole curve.

    Raises:
        ValueError: one class only, no positive pair among the neighbours, a target precision
            no threshold reaches (the message gives the highest reachable),
            bad shapes, k < 1, an unknown similarity, non-finite embeddings.

    Example:
        >>> res = calibrate(model.predict(x_val), y_val, precision=0.9)
        >>> res.threshold, res.precision, res.recall
    """
    target = _check_precision(precision)
    distances.get_distance(similarity)
    scores, same, queries = neighbour_pairs(embeddings, labels, k, similarity, gallery, query_mask, block_size)
    found = calibrate_pairs(scores, same, target)
    return dataclasses.replace(found, similarity=similarity, k=int(min(k, len(scores) // max(queries, 1))),
                               num_queries=queries)
