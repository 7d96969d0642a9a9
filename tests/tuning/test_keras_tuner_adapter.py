"""keras-tuner's private API as `tfsim.tuning.keras_tuner_adapter` relies on it, exercised on
small oracles without training. A failure here means the installed keras-tuner changed it:
each message names the version and what changed."""

import contextlib
import itertools

import keras_tuner as kt
import pytest

from tfsim.errors import UserInputError
from tfsim.tuning import keras_tuner_adapter as adapter

VERSION = f"keras-tuner {kt.__version__} (tfsim's adapter was written for {adapter.TESTED_VERSION})"
GRID = {"a": [1, 2, 3], "b": ["x", "y"]}


@contextlib.contextmanager
def relied_on(what: str):
    """Turns any failure inside into one naming the keras-tuner version and `what` the adapter assumes."""
    try:
        yield
    except Exception as err:  # an AttributeError, KeyError or TypeError from keras-tuner's internals
        pytest.fail(f"{VERSION}: {what} no longer holds: {type(err).__name__}: {err}", pytrace=False)


def grid_tuner(directory, project="p") -> kt.engine.base_tuner.BaseTuner:
    """A tuner that never trains: it gives the oracle its folder and reloads it, as a search does."""
    hps = kt.HyperParameters()
    for key, values in GRID.items():
        hps.Choice(key, values)
    oracle = adapter.ResumableGridSearchOracle(objective=kt.Objective("score", "max"), hyperparameters=hps,
                                               max_trials=100, seed=1)
    return kt.engine.base_tuner.BaseTuner(oracle, directory=str(directory), project_name=project)


def values(trial) -> tuple:
    return tuple(trial.hyperparameters.values[k] for k in GRID)


def finish(tuner, trial, score=0.5):
    tuner.oracle.update_trial(trial.trial_id, {"score": score})
    trial.status = kt.engine.trial.TrialStatus.COMPLETED
    tuner.oracle.end_trial(trial)
    tuner.save()  # as BaseTuner.on_trial_end does: oracle.json and the tuner's file


def test_private_attributes_are_where_the_adapter_reads_them():
    problems = adapter.private_api_problems()
    assert not problems, f"{VERSION}: " + "; ".join(problems)


def test_the_saved_grid_order_is_keras_tuners_order(tmp_path):
    """`_ordered_ids` walked from its head lists the trials in the grid's order, also when two
    workers hold trials at once (keras-tuner inserts each new id after the one it came from)."""
    tuner = grid_tuner(tmp_path)
    with relied_on("GridSearchOracle._ordered_ids as a LinkedList (_memory, _next_index from None)"):
        first, second = tuner.oracle.create_trial("w0"), tuner.oracle.create_trial("w1")
        finish(tuner, first)
        finish(tuner, second)
        while (trial := tuner.oracle.create_trial("w0")).status != "STOPPED":
            finish(tuner, trial)
        state = tuner.oracle.get_state()
        order = [values(tuner.oracle.trials[t]) for t in state["tfsim_grid_order"]]
    assert order == list(itertools.product(*GRID.values())), f"{VERSION}: the grid order read from _ordered_ids"
    assert set(state["tfsim_populate_next"]) <= set(tuner.oracle.trials), f"{VERSION}: _populate_next holds trial ids"


def test_a_reloaded_grid_search_proposes_each_combination_once(tmp_path):
    """keras-tuner's own GridSearchOracle forgets its grid order on reload
    (keras-team/keras-tuner#1055); the adapter's oracle saves it."""
    tuner = grid_tuner(tmp_path)
    seen = []
    with relied_on("GridSearchOracle's state and its reload"):
        held = [tuner.oracle.create_trial(worker) for worker in ("w0", "w1")]  # two trials running ...
        seen += [values(t) for t in held]
        finish(tuner, held[0])  # ... one finished, then the process dies

        again = grid_tuner(tmp_path)  # reloads oracle.json and trial_*/trial.json
        while (trial := again.oracle.create_trial("w0")).status != "STOPPED":
            if trial.trial_id != held[1].trial_id:  # the killed trial is handed out again
                seen.append(values(trial))
            finish(again, trial)
    assert sorted(seen) == sorted(itertools.product(*GRID.values())), (
        f"{VERSION}: a reloaded grid search proposed {seen}, not every combination once")


def test_distributed_role_follows_keras_tuners_variables(monkeypatch):
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(name, raising=False)
    roles = [adapter.distributed_role()]
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    roles.append(adapter.distributed_role())
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    roles.append(adapter.distributed_role())
    assert roles == ["single", "chief", "worker"], f"{VERSION}: keras_tuner.src.distribute.utils gave {roles}"


def test_a_changed_private_api_is_refused_naming_the_version(monkeypatch):
    monkeypatch.setattr(adapter, "private_api_problems", lambda: ["GridSearchOracle._populate_next is missing"])
    with pytest.raises(UserInputError, match=rf"keras-tuner {kt.__version__} changed what tfsim's tuning relies on: "
                                             r"GridSearchOracle._populate_next is missing\. Install keras-tuner=="):
        adapter.check_private_api()
