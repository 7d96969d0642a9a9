"""Post-training choices on validation folds (`tfsim.evaluation.selection`): the margin rule,
and whitening scores that pick whitening where an offset and a nuisance axis hide the classes
and no whitening where the classes lie along the dominant axes and the small axes are noise."""

import numpy as np
import pytest

from tfsim.evaluation import selection
from tfsim.evaluation.metrics import retrieval_metrics


def test_the_default_is_kept_unless_beaten_by_more_than_the_margin():
    scores = {"off": [0.80, 0.82], "0.25": [0.83, 0.83], "0.5": [0.82, 0.83]}
    assert selection.choose(scores, "0.5", 0.01) == ("0.5", {"off": 0.81, "0.25": 0.83, "0.5": 0.825})
    assert selection.choose(scores, "0.5", 0.0)[0] == "0.25"
    assert selection.choose(scores, "off", 0.005)[0] == "0.25"
    assert selection.choose({"off": [0.9], "0.5": [0.9]}, "0.5", 0.0)[0] == "0.5"  # a tie keeps the default
    with pytest.raises(ValueError, match="default"):
        selection.choose(scores, "1", 0.0)


def _classes(rng, n_classes, per_class, centres_scale, noise_scale, offset=0.0, nuisance_scale=0.0, dim=8,
             class_axes=8):
    """Class centres in the first `class_axes` axes, noise everywhere; all images shifted by
    `offset` along axis 0 and by a per-image nuisance along axis 1."""
    centres = np.zeros((n_classes, dim))
    centres[:, :class_axes] = rng.normal(size=(n_classes, class_axes)) * centres_scale
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + rng.normal(size=(len(labels), dim)) * noise_scale
    x[:, 0] += offset
    x[:, 1] += rng.normal(size=len(labels)) * nuisance_scale
    return x.astype(np.float32), labels


def _folds(x, labels, n_val):
    val = labels < n_val
    return [(x[~val], x[val], labels[val])]


def test_whitening_wins_where_an_offset_and_a_nuisance_axis_hide_the_classes():
    rng = np.random.default_rng(0)
    x, y = _classes(rng, 12, 20, centres_scale=1.0, noise_scale=0.6, offset=30.0, nuisance_scale=5.0)
    scores = selection.whitening_scores(_folds(x, y, 6), [0.5, 1.0], "recall@1")
    assert set(scores) == {"off", "0.5", "1"}
    assert scores["0.5"][0] > scores["off"][0] + 0.1
    assert selection.choose(scores, "off", 0.005)[0] != "off"
    # the scores are retrieval_metrics of the fold's validation images, leave-one-out
    val = y < 6
    assert scores["off"][0] == pytest.approx(retrieval_metrics(x[val], y[val], (1,), "cosine")["recall@1"])


def test_no_whitening_wins_where_the_small_axes_are_noise():
    rng = np.random.default_rng(1)
    x, y = _classes(rng, 12, 20, centres_scale=3.0, noise_scale=0.4, class_axes=2)
    x[:, 3:] *= 0.05  # tiny-variance axes of pure noise, which full whitening blows up
    x[:, 3:] += rng.normal(size=x[:, 3:].shape) * 0.05
    scores = selection.whitening_scores(_folds(x, y, 6), [1.0], "map@r")
    assert scores["off"][0] > scores["1"][0] + 0.05
    assert selection.choose(scores, "1", 0.005)[0] == "off"
