"""The one module that relies on keras-tuner's private API (written against keras-tuner 1.4.8).

What it relies on, and why there is no public way:

- `GridSearchOracle._ordered_ids`, a `LinkedList` of trial ids in grid order (`_memory`: the ids;
  `_next_index`: a defaultdict from an index to the next one, `None` -> the head, ending in
  `None`; `insert(id)`: appends), and `GridSearchOracle._populate_next`, the list of trial ids
  whose next combination is still to be proposed. Neither is in the oracle's saved state, so a
  grid search reloaded after a kill fails at its next trial with `KeyError` in `LinkedList.next`
  (keras-team/keras-tuner#1055, open). `ResumableGridSearchOracle` adds both to
  `get_state`/`set_state`, which `Oracle.save`/`reload` write to and read from `oracle.json`.
- `keras_tuner.src.distribute.utils.has_chief_oracle`/`is_chief_oracle`: the role of this
  process in a distributed search, read from the `KERASTUNER_*` variables by the very functions
  `BaseTuner` uses to decide whether it serves the oracle or asks the chief for trials, so tfsim
  cannot disagree with keras-tuner about it.

`private_api_problems()` checks all of this on a fresh oracle and returns what changed;
`tfsim.tuning.tune` calls it before any trial, and `tests/tuning/test_keras_tuner_adapter.py`
exercises the behaviour, so a keras-tuner release that changes it fails loudly, naming the
version and the attribute, instead of a search failing at its first resume.
"""

from __future__ import annotations

import collections
from typing import Literal

import keras_tuner
from keras_tuner.src.distribute import utils as distribute_utils

from tfsim.errors import UserInputError

TESTED_VERSION = "1.4.8"

# Keys this module adds to the grid oracle's saved state (oracle.json).
_ORDER_KEY = "tfsim_grid_order"
_POPULATE_NEXT_KEY = "tfsim_populate_next"


def _grid_order(ordered_ids) -> list:
    """The trial ids of a `LinkedList`, head first."""
    order, index = [], ordered_ids._next_index[None]
    while index is not None:
        order.append(ordered_ids._memory[index])
        index = ordered_ids._next_index[index]
    return order


class ResumableGridSearchOracle(keras_tuner.oracles.GridSearchOracle):
    """keras-tuner's `GridSearchOracle` that also saves its grid order and pending trials,
    so a search reloaded after a kill proposes every remaining combination exactly once."""

    def get_state(self):
        state = super().get_state()
        state[_ORDER_KEY] = _grid_order(self._ordered_ids)
        state[_POPULATE_NEXT_KEY] = list(self._populate_next)
        return state

    def set_state(self, state):
        super().set_state(state)
        self._ordered_ids = type(self._ordered_ids)()
        for trial_id in state.get(_ORDER_KEY, []):
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(state.get(_POPULATE_NEXT_KEY, []))


def distributed_role() -> Literal["single", "chief", "worker"]:
    """This process's role in keras-tuner's distributed tuning: "chief" serves the oracle
    (`KERASTUNER_TUNER_ID` contains "chief"), "worker" asks it for trials, "single" when
    `KERASTUNER_ORACLE_IP` is unset."""
    if not distribute_utils.has_chief_oracle():
        return "single"
    return "chief" if distribute_utils.is_chief_oracle() else "worker"


def private_api_problems() -> list[str]:
    """What keras-tuner no longer provides as this module assumes (empty when all is there)."""
    problems = []
    for name in ("has_chief_oracle", "is_chief_oracle"):
        if not callable(getattr(distribute_utils, name, None)):
            problems.append(f"keras_tuner.src.distribute.utils.{name} is missing")
    oracle = keras_tuner.oracles.GridSearchOracle(objective=keras_tuner.Objective("score", "max"), max_trials=1)
    ordered = getattr(oracle, "_ordered_ids", None)
    if ordered is None:
        problems.append("GridSearchOracle._ordered_ids is missing")
    else:
        memory, next_index = getattr(ordered, "_memory", None), getattr(ordered, "_next_index", None)
        if not isinstance(memory, list):
            problems.append(f"GridSearchOracle._ordered_ids._memory is not a list (got {type(memory).__name__})")
        if not isinstance(next_index, collections.defaultdict) or next_index[None] is not None:
            problems.append("GridSearchOracle._ordered_ids._next_index is not a defaultdict whose missing keys "
                            f"give None (got {type(next_index).__name__})")
        if not callable(getattr(ordered, "insert", None)):
            problems.append("GridSearchOracle._ordered_ids.insert is missing")
    if not isinstance(getattr(oracle, "_populate_next", None), list):
        problems.append("GridSearchOracle._populate_next is missing or not a list")
    return problems


def check_private_api() -> None:
    """Raises UserInputError naming the installed keras-tuner and what changed, if anything did."""
    problems = private_api_problems()
    if problems:
        raise UserInputError(
            f"keras-tuner {keras_tuner.__version__} changed what tfsim's tuning relies on: {'; '.join(problems)}. "
            f"Install keras-tuner=={TESTED_VERSION}, the version tfsim.tuning.keras_tuner_adapter was "
            "written for.")
