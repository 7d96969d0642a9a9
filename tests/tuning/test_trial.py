"""What a trial sees: the training classes split again by class into the classes it trains on and
the validation classes that score it; the test classes never."""

import numpy as np
import pytest

from tfsim import config
from tfsim.errors import UserInputError
from tfsim.tuning.trial import validation_split


def test_validation_classes_come_from_training_classes_only(base, split):
    train_classes = set(np.unique(split.train.labels).tolist())
    trial = validation_split(split, base.tune)
    val = set(np.unique(trial.test.labels).tolist())
    fit = set(np.unique(trial.train.labels).tolist())
    assert len(val) == 2 and val | fit == train_classes and not val & fit  # round(0.25 * 6) = 2
    assert not (val | fit) & set(base.data.test_classes)
    again = validation_split(split, base.tune)
    assert np.array_equal(again.test.ids, trial.test.ids)  # seeded
    picks = {tuple(np.unique(validation_split(split, config.load("default", [f"tune.seed={s}"]).tune).test.labels))
             for s in range(6)}
    assert len(picks) > 1  # the seed chooses which classes
    explicit = validation_split(split, config.load("default", ["tune.val_classes=0,3"]).tune)
    assert sorted(np.unique(explicit.test.labels).tolist()) == [0, 3]


def test_validation_class_errors(split):
    with pytest.raises(UserInputError, match=r"`tune.val_classes`: expected training classes.*Received \[2\]"):
        validation_split(split, config.load("default", ["tune.val_classes=0,2"]).tune)
    with pytest.raises(UserInputError, match="2 left to train on"):
        validation_split(split, config.load("default", ["tune.val_fraction=0.9"]).tune)

