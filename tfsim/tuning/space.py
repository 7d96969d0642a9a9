"""The search space: `--grid KEY=V1,V2` items typed by the config, their keras-tuner encoding,
the configs a trial and the best trial train, and the check of every combination before any
trial starts."""

from __future__ import annotations

import itertools
import math
import typing
from typing import Any, Optional, Sequence

import numpy as np

from tfsim import config as config_lib
from tfsim.config import Config
from tfsim.errors import UserInputError
from tfsim.training import preflight
from tfsim.training.task import Split

# Keys a search may not vary: where outputs go, the search itself, how trials are measured,
# and which images are the data and the test classes (the validation split depends on them).
_FIXED_SECTIONS = ("run", "tune", "export", "index", "eval")
_FIXED_DATA_KEYS = ("source", "path", "image_root", "protocol", "tfds_name", "tfds_split", "data_dir", "manual_dir",
                    "test_classes", "on_bad_file")
# Grids larger than this are validated value by value instead of combination by combination,
# so the check stays within seconds.
_MAX_CHECKED_COMBINATIONS = 5000


def parse_grid(cfg: Config, items: Sequence[str]) -> dict[str, list]:
    """`["loss.margin=0.2,0.5", ...]` -> `{"loss.margin": [0.2, 0.5], ...}`, typed by the config.

    Args:
        cfg: the base config (its types type the values).
        items: `KEY=V1,V2,...` strings, values separated by commas.

    Returns:
        The grid: each searched key with its values, in the order given.

    Raises:
        UserInputError: naming the key, for an unknown or fixed key, a value of the wrong type, a
            key given twice or a value listed twice, or no item at all.

    Example:
        >>> parse_grid(cfg, ["loss.margin=0.2,0.5"])
        {'loss.margin': [0.2, 0.5]}
    """
    hints = typing.get_type_hints(Config)
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise UserInputError(f"Invalid --grid {item!r}: expected KEY=V1,V2,..., e.g. loss.margin=0.2,0.5.")
        key, text = (part.strip() for part in item.split("=", 1))
        section, _, name = key.partition(".")
        fields = typing.get_type_hints(hints[section]) if section in hints else {}
        if name not in fields:
            searchable = [f"{section}.{k}" for k in fields if not _is_fixed(section, k)]
            expected = (f"one of {searchable}" if searchable else
                        f"a key of a section among {[s for s in hints if s not in _FIXED_SECTIONS]}")
            raise UserInputError(f"Unknown config key `{key}` in --grid: expected {expected}. Check the spelling.")
        if _is_fixed(section, name):
            raise UserInputError(
                f"`{key}` cannot be searched: the sections {list(_FIXED_SECTIONS)} and the data keys "
                f"{list(_FIXED_DATA_KEYS)} fix where a search writes, how trials are measured and which "
                "classes are held out, so every trial must share them. Set it with --set instead.")
        if key in grid:
            raise UserInputError(f"`{key}` is given twice with --grid: list all its values once, "
                                 f"e.g. --grid {key}=V1,V2.")
        if typing.get_origin(fields[name]) is tuple:  # a comma would be ambiguous: it separates the values
            raise UserInputError(f"`{key}` holds a list and cannot be searched. Set it with --set instead.")
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(p == "" for p in parts):
            raise UserInputError(f"Invalid --grid {item!r}: expected values separated by commas, none empty.")
        values = [config_lib.coerce(p, fields[name], key, from_string=True) for p in parts]
        if len(set(map(value_label, values))) != len(values):
            raise UserInputError(f"Invalid --grid {item!r}: a value is listed twice.")
        grid[key] = values
    if not grid:
        raise UserInputError("Nothing to search: give at least one --grid KEY=V1,V2 (e.g. --grid loss.margin=0.2,0.5).")
    return grid


def _is_fixed(section: str, key: str) -> bool:
    return section in _FIXED_SECTIONS or (section == "data" and key in _FIXED_DATA_KEYS)


def value_label(value: Any) -> str:
    """How a value is shown, and stored by keras-tuner when its values are not all one number type."""
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def json_value(value: Any) -> Any:
    """A config value as JSON writes it back (tuples as lists), so records compare equal after a reload."""
    return list(value) if isinstance(value, tuple) else value


def encode_space(grid: dict[str, list]) -> dict[str, list]:
    """The keras-tuner `Choice` values of each key: the values themselves when they are all
    ints, all floats (ints among floats become floats), all bools or all strings (so Bayesian
    optimisation sees numbers as numbers); else their labels."""
    space = {}
    for key, values in grid.items():
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and kinds <= {int, float, bool, str}:
            space[key] = list(values)
        elif kinds <= {int, float}:
            space[key] = [float(v) for v in values]
        else:
            space[key] = [value_label(v) for v in values]
    return space


def decode_values(grid: dict[str, list], hp_values: dict) -> dict[str, Any]:
    """A trial's keras-tuner values -> config values (keras-tuner's own `tuner/...` keys dropped).

    Raises:
        KeyError, ValueError: `hp_values` is not a point of `grid`'s space.
    """
    space = encode_space(grid)
    return {key: values[space[key].index(hp_values[key])] for key, values in grid.items()}


def apply_values(base: Config, values: dict[str, Any], **fixed: dict) -> Config:
    """`base` with the searched `values` (`{"loss.margin": 0.2}`) and `fixed` section updates
    (`run={"name": "x"}`), applied as `--set` would apply them."""
    nested: dict = {}
    for key, value in values.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = json_value(value)
    for section, updates in fixed.items():
        nested.setdefault(section, {}).update(updates)
    return config_lib.from_dict(nested, base)


def trial_config(base: Config, values: dict[str, Any], trial_id: str, epochs: Optional[int] = None) -> Config:
    """The config a trial trains: the searched values, named after the trial, exported nowhere,
    without baselines (they do not change the score and cost time). `epochs`: Hyperband's budget."""
    fixed = {"run": {"name": f"trial_{trial_id}"}, "export": {"enabled": False}, "index": {"enabled": False},
             "eval": {"baselines": False}}
    if epochs is not None:
        fixed["train"] = {"epochs": int(epochs)}
    return apply_values(base, values, **fixed)


def best_config(base: Config, values: dict[str, Any], name: str) -> Config:
    """The config the search recommends: the base with the best trial's values, run as `<name>_best`."""
    return apply_values(base, values, run={"name": f"{name}_best"})


def check_search(base: Config, grid: dict[str, list], trial_split: Split) -> int:
    """Validates every combination (or every value, for huge grids) and the sampler against the
    trials' data, before any trial starts.

    Combinations that fail while others pass are left for the search to record as failed
    trials; a value that fails in every combination, or a search in which every combination
    fails, is an error now.

    Args:
        base: the resolved base config.
        grid: from `parse_grid`.
        trial_split: what the trials train on (`tfsim.tuning.trial.validation_split`).

    Returns:
        The number of combinations.

    Raises:
        UserInputError: with the first reason a failing value (or every combination) fails.
    """
    keys = list(grid)
    size = math.prod(len(v) for v in grid.values())
    if size <= _MAX_CHECKED_COMBINATIONS:
        combos = [dict(zip(keys, c)) for c in itertools.product(*grid.values())]
    else:  # each value once, the other keys at their first value
        combos = [{**{k: grid[k][0] for k in keys}, key: v} for key in keys for v in grid[key]]
    labels = trial_split.train.labels
    works: dict[tuple[str, str], bool] = {(k, value_label(v)): False for k in keys for v in grid[k]}
    first_error: dict[tuple[str, str], str] = {}
    for combo in combos:
        try:
            cfg = trial_config(base, combo, "check")
            config_lib.validate(cfg)
            chosen = preflight.choose_pk(config_lib.resolve(cfg), labels, 1, preflight.unset_pk_keys(cfg), say=False)
            preflight.check(chosen, labels, replicas=1)
        except UserInputError as err:
            for k, v in combo.items():
                first_error.setdefault((k, value_label(v)), str(err))
            continue
        for k, v in combo.items():
            works[(k, value_label(v))] = True
    where = (f" (trials train on {len(np.unique(labels))} classes, {len(trial_split.train)} "
             "images: the training classes minus the validation classes)")
    if not any(works.values()):
        raise UserInputError("Every combination of the search fails before training: "
                             f"{next(iter(first_error.values()))}{where}.")
    for (key, value), ok in works.items():
        if not ok:
            raise UserInputError(
                f"--grid {key}={value} fails in every combination of the search: {first_error[(key, value)]}"
                f"{where}. Drop that value.")
    return size
