"""Post-training choices scored on validation classes, never on the test classes.

A stage applied after training (today: the whitening, `whitening.enabled=auto`) has a few
candidate settings. Each is fitted on the training images of some classes and scored on the
images of other classes the candidate never saw ("folds"); the candidates' mean scores over the
folds decide, with a margin: the default candidate is kept unless another beats it by more
than `margin` (a small validation set is a noisy judge, and the default is what was measured
to help across datasets).

    folds = [(fit_features, val_features, val_labels), ...]
    scores = whitening_scores(folds, powers=(0.25, 0.5), metric="recall@1")
    choice = choose(scores, default="0.5", margin=0.01)

Candidate names: "off" (no whitening) or the power as text ("0.5").
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tfsim.evaluation.metrics import retrieval_metrics
from tfsim.models.whitening import apply_whitening, fit_whitening

OFF = "off"


def candidate_name(power: Optional[float]) -> str:
    """"off" for None, else the power as text ("0.5")."""
    return OFF if power is None else f"{float(power):g}"


def _score(embeddings: np.ndarray, labels: np.ndarray, metric: str, similarity: str) -> float:
    ks = (int(metric.split("@")[1]),) if metric.startswith("recall@") else (1,)
    return float(retrieval_metrics(embeddings, labels, ks, similarity)[metric])


def whitening_scores(folds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], powers: Sequence[float],
                     metric: str = "recall@1", dims: int = 0, similarity: str = "cosine") -> dict[str, list[float]]:
    """Each candidate's `metric` on each fold: no whitening ("off"), and a whitening of each power
    fitted on the fold's `fit_features` and applied to its `val_features` (each validation image
    querying the fold's other validation images, leave-one-out).

    Args:
        folds: `(fit_features [N, D], val_features [M, D], val_labels [M])` per fold; the
            validation classes are not among the fitted ones.
        powers: the whitening powers tried (see `tfsim.models.whitening`).
        metric: a key of `retrieval_metrics` ("recall@K", "map@r", "r_precision").
        dims: principal axes kept (0 = all).
        similarity: how validation images are compared.

    Returns:
        `{candidate name: [score per fold]}`, "off" first.
    """
    scores: dict[str, list[float]] = {OFF: []}
    for fit, val, labels in folds:
        scores[OFF].append(_score(val, labels, metric, similarity))
        for power in powers:
            whitened = np.asarray(apply_whitening(val, *fit_whitening(fit, power, dims)), np.float32)
            scores.setdefault(candidate_name(power), []).append(_score(whitened, labels, metric, similarity))
    return scores


def choose(scores: dict[str, list[float]], default: str, margin: float) -> tuple[str, dict[str, float]]:
    """The candidate to keep: `default` unless another's mean score beats its mean by more than
    `margin` (then the best of those). Returns `(choice, {candidate: mean score})`."""
    if default not in scores:
        raise ValueError(f"Invalid value for `default`: expected one of {list(scores)}. Received: {default!r}")
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    best = max(means, key=lambda name: (means[name], name == default))
    return (best if means[best] > means[default] + margin else default), means
