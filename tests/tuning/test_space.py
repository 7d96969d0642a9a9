"""The search space: grid parsing typed by the config, its keras-tuner encoding, the configs a
trial and the best trial train, and the check of every combination before any trial."""

import pytest

from tfsim import config
from tfsim.errors import UserInputError
from tfsim.tuning import space
from tfsim.tuning.trial import validation_split


def test_grid_values_are_typed_by_the_config(base):
    grid = space.parse_grid(base, ["loss.margin=0.2, 1", "model.embedding_dim=32,64", "data.flip=true,false",
                                   "loss.name=triplet_hard,lifted_struct", "loss.soft=null,true"])
    assert grid == {"loss.margin": [0.2, 1.0], "model.embedding_dim": [32, 64], "data.flip": [True, False],
                    "loss.name": ["triplet_hard", "lifted_struct"], "loss.soft": [None, True]}
    assert [type(v) for v in grid["loss.margin"]] == [float, float]
    assert [type(v) for v in grid["model.embedding_dim"]] == [int, int]


@pytest.mark.parametrize("item, message", [
    ("loss.margn=0.1,0.2", "Unknown config key `loss.margn` in --grid: expected one of ['loss.name', 'loss.margin'"),
    ("los.margin=0.1", "Unknown config key `los.margin` in --grid: expected a key of a section among ['data'"),
    ("model.embedding_dim=32,big",
     "Invalid value for `model.embedding_dim`: expected an integer. Received: model.embedding_dim='big'"),
    ("train.learning_rate=0.1,inf", "Invalid value for `train.learning_rate`: expected a finite number"),
    ("run.name=a,b", "`run.name` cannot be searched"),
    ("data.test_classes=1,2;3,4", "`data.test_classes` cannot be searched"),
    ("eval.similarity=cosine,dot", "`eval.similarity` cannot be searched"),
    ("loss.margin=0.2,0.2", "a value is listed twice"),
    ("loss.margin=", "none empty"),
    ("loss.margin", "expected KEY=V1,V2"),
])
def test_bad_grid_items_fail_with_the_key(base, item, message):
    with pytest.raises(UserInputError) as err:
        space.parse_grid(base, [item])
    assert message in str(err.value)


def test_a_key_twice_and_an_empty_grid_are_errors(base):
    with pytest.raises(UserInputError, match="`loss.margin` is given twice"):
        space.parse_grid(base, ["loss.margin=0.1", "loss.margin=0.2"])
    with pytest.raises(UserInputError, match="Nothing to search"):
        space.parse_grid(base, [])


def test_the_tune_section_is_checked_with_the_config():
    with pytest.raises(UserInputError, match="tune.val_fraction"):
        config.load("default", ["tune.val_fraction=1.5"])
    with pytest.raises(UserInputError, match=r"`tune.objective`: expected one of \['recall@1'"):
        config.load("default", ["tune.objective=recall@16"])


def test_space_encoding_round_trips():
    grid = {"a": [1, 2], "b": [0.5, 1], "c": [None, 0.5], "d": [True, False], "e": ["x", "y"]}
    encoded = space.encode_space(grid)
    assert encoded == {"a": [1, 2], "b": [0.5, 1.0], "c": ["null", "0.5"], "d": [True, False], "e": ["x", "y"]}
    for i in range(2):
        hp_values = {k: v[i] for k, v in encoded.items()} | {"tuner/epochs": 3}
        assert space.decode_values(grid, hp_values) == {k: v[i] for k, v in grid.items()}
    with pytest.raises(ValueError):
        space.decode_values(grid, {k: v[0] for k, v in encoded.items()} | {"a": 7})


def test_trial_and_best_configs(base):
    trial = space.trial_config(base, {"loss.margin": 0.3, "model.embedding_dim": 32}, "07", epochs=2)
    assert (trial.loss.margin, trial.model.embedding_dim, trial.train.epochs) == (0.3, 32, 2)
    assert trial.run.name == "trial_07" and not trial.export.enabled and not trial.index.enabled
    assert not trial.eval.baselines
    best = space.best_config(base, {"loss.margin": 0.3}, "search")
    assert best.run.name == "search_best" and best.export.enabled and best.eval.baselines
    assert best.train.epochs == base.train.epochs and best.loss.margin == 0.3


def test_search_checks_combinations_before_any_trial(base, split):
    trial_split = validation_split(split, base.tune)
    ok = space.parse_grid(base, ["sampler.kind=pk,random", "sampler.classes_per_batch=null,2"])
    assert space.check_search(base, ok, trial_split) == 4  # (random, 2) fails, but each value works somewhere
    bad = space.parse_grid(base, ["sampler.classes_per_batch=2,5"])
    with pytest.raises(UserInputError, match=r"--grid sampler.classes_per_batch=5 fails in every combination.*"
                                             r"only 4 classes. Expected 2..4.*trials train on 4 classes"):
        space.check_search(base, bad, trial_split)
    none = space.parse_grid(config.load("default"), ["loss.margin=0.2,0.5"])
    with pytest.raises(UserInputError, match="Every combination of the search fails before training: Invalid value "
                                             "for `sampler.classes_per_batch`: a P x K batch holds P distinct"):
        space.check_search(config.load("default"), none, trial_split)
