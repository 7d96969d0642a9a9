"""`tune(cfg, grid)`: hyper-parameter search with keras-tuner, scored by retrieval on classes
the trial never trained on, and never on the test classes.

    config + `parse_grid("KEY=V1,V2", ...)`: every value typed by the config, every
        combination validated, and the sampler checked against the trials' data, before any
        trial starts (a bad key, value or impossible search fails fast with the usual message)
      -> `validation_split`: the training classes split again, class-disjoint: validation
         classes (`tune.val_classes` or a seeded `tune.val_fraction`) and the trials' training
         classes; `data.test_classes` are never loaded into a trial
      -> keras-tuner: one `Choice` per searched key, the oracle of `tune.tuner` (GridSearch,
         RandomSearch, BayesianOptimization, Hyperband) and `RetrievalTuner` (a `BaseTuner`
         whose `run_trial` is a whole `training.train` run: same code path as the train
         command, in `trial_NNNN/run/`, export, index and baselines off)
      -> trials.csv, trials.md, objective.png, TensorBoard hparams (after every trial)
      -> best.json: the best trial's config (a config file for `train --config`)
      -> the final run: `train(best)` on all training classes, evaluated on the test classes
         (`runs/<name>_best/`, exported as the config says): the figure to report.

Folder (`<run.root>/tune/<name>/`): keras-tuner's project (oracle.json, trial_NNNN/trial.json,
which is what resume reads) and, per trial, `trial_NNNN/run/` (a run folder) and
`trial_NNNN/tfsim_trial.json` (values, metrics, seconds, status and reason);
`search.json` (what was searched: a different search under the same name is refused),
the tables, the plot and best.json.

Faults: the same command after a kill continues the search: finished trials are not run
again, the interrupted one is re-run by the oracle and resumes from its run folder's last
epoch. A trial that raises (an impossible combination, a diverging loss, out of memory) is
recorded as failed with its reason, and the search goes on.

Several machines: keras-tuner's distributed tuning. The process with
`KERASTUNER_TUNER_ID=chief` serves the oracle at `KERASTUNER_ORACLE_IP:PORT` and, when the
search ends, writes the report and runs the final training; processes with other ids run
trials. All of them must see the same `<run.root>/tune/<name>/` folder (a shared file system).

Hyperband trains each trial from scratch for the `tuner/epochs` the oracle gives (up to
`train.epochs`); it does not continue from a parent trial's checkpoint, since the cosine
learning-rate schedule depends on the number of epochs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import time
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from tfsim import config as config_lib
from tfsim.config import Config
from tfsim.data import splits
from tfsim.errors import UserInputError, config_keys
from tfsim.training import preflight, tuning_report
from tfsim.training.fit import Split, load_split, summarize_names
from tfsim.training.train import TrainResult, train

log = logging.getLogger(__name__)

# Keys a search may not vary: where outputs go, the search itself, how trials are measured,
# and which images are the data and the test classes (the validation split depends on them).
_FIXED_SECTIONS = ("run", "tune", "export", "index", "eval")
_FIXED_DATA_KEYS = ("source", "path", "image_root", "protocol", "tfds_name", "tfds_split", "data_dir", "manual_dir", "test_classes",
                    "on_bad_file")
# Grids larger than this are validated value by value instead of combination by combination.
_MAX_CHECKED_COMBINATIONS = 5000


@dataclasses.dataclass
class TuneResult:
    """What a search produced."""

    tune_dir: Path
    rows: list[dict]  # one per trial, best first (see tuning_report)
    best_config: Optional[Config]
    final: Optional[TrainResult]  # the best config trained on all training classes, on the test classes
    new_trials: int  # trials this call ran to the end (0 on a finished search)
    val_classes: list[str]


def metric_names(cfg: Config) -> list[str]:
    """The scalar retrieval metrics a trial reports."""
    return [f"recall@{k}" for k in cfg.eval.recall_ks] + ["map@r", "r_precision"]


def parse_grid(cfg: Config, items: Sequence[str]) -> dict[str, list]:
    """`["loss.margin=0.2,0.5", ...]` -> `{"loss.margin": [0.2, 0.5], ...}`, typed by the config.

    Values are separated by commas. Raises UserInputError naming the key for an unknown or
    fixed key, a value of the wrong type, a key given twice or a value listed twice.
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
            searchable = [f"{section}.{k}" for k in fields if not _fixed(section, k)]
            expected = (f"one of {searchable}" if searchable else
                        f"a key of a section among {[s for s in hints if s not in _FIXED_SECTIONS]}")
            raise UserInputError(f"Unknown config key `{key}` in --grid: expected {expected}. Check the spelling.")
        if _fixed(section, name):
            raise UserInputError(
                f"`{key}` cannot be searched: the sections {list(_FIXED_SECTIONS)} and the data keys "
                f"{list(_FIXED_DATA_KEYS)} fix where a search writes, how trials are measured and which "
                "classes are held out, so every trial must share them. Set it with --set instead.")
        if key in grid:
            raise UserInputError(f"`{key}` is given twice with --grid: list all its values once, "
                                 f"e.g. --grid {key}=V1,V2.")
        if typing.get_origin(fields[name]) is tuple:  # (every list-valued key is a fixed one today)
            raise UserInputError(f"`{key}` holds a list and cannot be searched. Set it with --set instead.")
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(p == "" for p in parts):
            raise UserInputError(f"Invalid --grid {item!r}: expected values separated by commas, none empty.")
        values = [config_lib._coerce(p, fields[name], key, from_string=True) for p in parts]
        if len(set(map(_label, values))) != len(values):
            raise UserInputError(f"Invalid --grid {item!r}: a value is listed twice.")
        grid[key] = values
    if not grid:
        raise UserInputError("Nothing to search: give at least one --grid KEY=V1,V2 (e.g. --grid loss.margin=0.2,0.5).")
    return grid


def _fixed(section: str, key: str) -> bool:
    return section in _FIXED_SECTIONS or (section == "data" and key in _FIXED_DATA_KEYS)


def _label(value: Any) -> str:
    """How a value is shown, and stored by keras-tuner when its values are not all one number type."""
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


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
            space[key] = [_label(v) for v in values]
    return space


def decode_values(grid: dict[str, list], hp_values: dict) -> dict[str, Any]:
    """A trial's keras-tuner values -> config values (keras-tuner's own `tuner/...` keys dropped)."""
    space = encode_space(grid)
    out = {}
    for key, values in grid.items():
        out[key] = values[space[key].index(hp_values[key])]
    return out


def apply_values(base: Config, values: dict[str, Any], **fixed: dict) -> Config:
    """`base` with the searched `values` (`{"loss.margin": 0.2}`) and `fixed` section updates."""
    nested: dict = {}
    for key, value in values.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
    for section, updates in fixed.items():
        nested.setdefault(section, {}).update(updates)
    return config_lib.from_dict(nested, base)


def trial_config(base: Config, values: dict[str, Any], trial_id: str, epochs: Optional[int] = None) -> Config:
    """The config a trial trains: the searched values, named after the trial, exported nowhere,
    without baselines (the validation classes score it)."""
    fixed = {"run": {"name": f"trial_{trial_id}"}, "export": {"enabled": False}, "index": {"enabled": False},
             "eval": {"baselines": False}}
    if epochs is not None:
        fixed["train"] = {"epochs": int(epochs)}
    return apply_values(base, values, **fixed)


def best_config(base: Config, values: dict[str, Any], name: str) -> Config:
    """The config the search recommends: the base with the best trial's values, run as `<name>_best`."""
    return apply_values(base, values, run={"name": f"{name}_best"})


def validation_classes(train_labels: np.ndarray, tune: config_lib.TuneConfig) -> np.ndarray:
    """Label indices of the validation classes, carved from the training classes."""
    return splits.validation_classes(train_labels, tune.val_fraction, tune.seed, tune.val_classes)


def validation_split(split: Split, tune: config_lib.TuneConfig) -> Split:
    """The split a trial sees: training classes minus validation classes, validation classes held out."""
    val = validation_classes(split.train.labels, tune)
    with config_keys(test_classes="tune.val_classes"):
        train_set, val_set = splits.class_disjoint_split(split.train, val.tolist())
    return Split(split.train, train_set, val_set)


def check_search(base: Config, grid: dict[str, list], trial_split: Split) -> int:
    """Validates every combination (or every value, for huge grids) and the sampler against the
    trials' data; returns the number of combinations. Combinations that fail while others pass
    are left for the search to record as failed trials; a value that fails in every combination,
    or a search in which every combination fails, is an error now."""
    keys = list(grid)
    size = math.prod(len(v) for v in grid.values())
    if size <= _MAX_CHECKED_COMBINATIONS:
        combos = [dict(zip(keys, c)) for c in itertools.product(*grid.values())]
    else:  # each value once, the other keys at their first value
        combos = [{**{k: grid[k][0] for k in keys}, key: v} for key in keys for v in grid[key]]
    works: dict[tuple[str, str], bool] = {(k, _label(v)): False for k in keys for v in grid[k]}
    first_error: dict[tuple[str, str], str] = {}
    for combo in combos:
        try:
            cfg = trial_config(base, combo, "check")
            config_lib.validate(cfg)
            labels = trial_split.train.labels
            chosen = preflight.choose_pk(config_lib.resolve(cfg), labels, 1, preflight.unset_pk_keys(cfg), say=False)
            preflight.check(chosen, labels, replicas=1)
        except UserInputError as err:
            for k, v in combo.items():
                first_error.setdefault((k, _label(v)), str(err))
            continue
        for k, v in combo.items():
            works[(k, _label(v))] = True
    where = (f" (trials train on {len(np.unique(trial_split.train.labels))} classes, {len(trial_split.train)} "
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


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if not isinstance(err, UserInputError) else text


class _Search:
    """The parts of a search every process shares: base config, grid, data, folder."""

    def __init__(self, base: Config, grid: dict[str, list], tune_dir: Path, verbose: int):
        self.base, self.grid, self.tune_dir, self.verbose = base, grid, tune_dir, verbose
        self.metrics = metric_names(base)
        self.split = load_split(base)
        self.trial_split = validation_split(self.split, base.tune)

    def run_trial(self, trial_id: str, hp_values: dict, trial_dir: Path) -> dict:
        """Trains and scores one trial; raises keras-tuner's FailedTrialError with the reason."""
        import keras
        import keras_tuner as kt

        values = decode_values(self.grid, hp_values)
        epochs = hp_values.get("tuner/epochs")
        record = {"trial": trial_id, "values": {k: _jsonable(v) for k, v in values.items()}, "status": "running"}
        if epochs is not None:
            record["epochs"] = int(epochs)
        start = time.time()
        keras.backend.clear_session()  # each trial starts from the state a fresh process would have
        try:
            cfg = trial_config(self.base, values, trial_id, epochs)
            result = train(cfg, trial_dir / "run", resume=True, verbose=self.verbose, split=self.trial_split)
            metrics = {m: float(result.metrics[m]) for m in self.metrics}
            objective = metrics[self.base.tune.objective]
            if not math.isfinite(objective):
                raise UserInputError(f"the objective {self.base.tune.objective} is {objective}")
        except Exception as err:  # any failure is this trial's result; the search goes on
            record.update(status="failed", reason=_one_line(err), seconds=time.time() - start)
            stages_write_json(trial_dir / "tfsim_trial.json", record)
            log.warning("Trial %s failed: %s", trial_id, record["reason"])
            raise kt.errors.FailedTrialError(record["reason"]) from err
        record.update(status="ok", metrics=metrics, seconds=time.time() - start)
        if isinstance(result.metrics.get("unwhitened"), dict):  # what the epoch lines show (see trial_message)
            record["unwhitened"] = {m: float(result.metrics["unwhitened"][m]) for m in self.metrics}
        stages_write_json(trial_dir / "tfsim_trial.json", record)
        tuning_report.write_hparams_trial(trial_dir / "run" / "tensorboard", trial_name(self.tune_dir.name, trial_id),
                                          _hparams_values(self.grid, hp_values, epochs), metrics,
                                          encode_space(self.grid))
        return metrics


def trial_name(search: str, trial_id: str) -> str:
    """How TensorBoard's HPARAMS tab names a trial: `<search>/trial_<id>`, as its folder
    (`<run.root>/tune/<search>/trial_<id>/`) and trials.md's `trial` column; the search's name
    keeps trials of different searches apart under one logdir."""
    return f"{search}/trial_{trial_id}"


def trial_message(record: dict, objective: str) -> str:
    """The console line of a trial that finished (its `tfsim_trial.json` record, status "ok";
    a failed trial's line is `_Search.run_trial`'s warning)."""
    seconds = f" in {record['seconds']:.0f} s" if record.get("seconds") is not None else ""
    text = f"Trial {record['trial']} done{seconds}: {objective} {record['metrics'][objective]:.4f} on the validation classes"
    if "unwhitened" in record:
        text += (f" (its model with whitening, as exported; before whitening, as in the epoch lines: "
                 f"{record['unwhitened'][objective]:.4f})")
    return text + "."


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _hparams_values(grid: dict, hp_values: dict, epochs) -> dict:
    space = encode_space(grid)
    out = {k: hp_values[k] for k in space}
    if epochs is not None:
        out["tuner/epochs"] = int(epochs)
    return out


def stages_write_json(path: Path, data: dict) -> None:
    from tfsim.training.stages import write_json
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)


def _make_oracle(cfg: Config, grid: dict[str, list], size: int):
    import keras_tuner as kt

    t = cfg.tune
    hps = kt.HyperParameters()
    for key, values in encode_space(grid).items():
        hps.Choice(key, values)
    common = dict(objective=kt.Objective(t.objective, "max"), hyperparameters=hps,
                  # keras-tuner's 0 means "a random seed"; ours is reproducible
                  seed=t.seed + 1,
                  # a failed trial is a result, not a reason to stop (keras-tuner stops after 3)
                  max_consecutive_failed_trials=10 ** 9)
    max_trials = t.max_trials or size
    if t.tuner == "grid":
        return _resumable_grid_oracle()(max_trials=max_trials, **common)
    if t.tuner == "random":
        return kt.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if t.tuner == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=max_trials, **common)
    return kt.oracles.HyperbandOracle(max_epochs=cfg.train.epochs, factor=3, **common)


def _resumable_grid_oracle():
    """keras-tuner 1.4.8's GridSearchOracle, with the state it forgets on reload saved too.

    Its `_ordered_ids` (trial ids in grid order) and `_populate_next` (trials whose next
    combination is still to be proposed) are not part of its saved state, so a search
    reloaded after a kill fails at the next trial with `KeyError` in `LinkedList.next`
    (keras-team/keras-tuner#1055, open). This subclass adds both to the state.
    """
    import keras_tuner as kt

    class ResumableGridSearchOracle(kt.oracles.GridSearchOracle):
        def get_state(self):
            state = super().get_state()
            order, index = [], self._ordered_ids._next_index[None]  # walk the linked list from its head
            while index is not None:
                order.append(self._ordered_ids._memory[index])
                index = self._ordered_ids._next_index[index]
            state["tfsim_grid_order"] = order
            state["tfsim_populate_next"] = list(self._populate_next)
            return state

        def set_state(self, state):
            super().set_state(state)
            self._ordered_ids = type(self._ordered_ids)()
            for trial_id in state.get("tfsim_grid_order", []):
                self._ordered_ids.insert(trial_id)  # appended in order
            self._populate_next = list(state.get("tfsim_populate_next", []))

    return ResumableGridSearchOracle


def _tuner_class():
    import keras_tuner as kt

    class RetrievalTuner(kt.engine.base_tuner.BaseTuner):
        """keras-tuner's BaseTuner whose trial is a tfsim training run (`_Search.run_trial`)."""

        def __init__(self, oracle, search: _Search, on_trial_end=None, **kwargs):
            self.search_ = search
            self.trials_run = 0
            self._report = on_trial_end
            super().__init__(oracle, **kwargs)

        def run_trial(self, trial, *args, **kwargs):
            return self.search_.run_trial(trial.trial_id, trial.hyperparameters.values,
                                          Path(self.get_trial_dir(trial.trial_id)))

        # The console's trial lines are these (keras-tuner's own, "Running Trial #1", count from 1
        # while trial ids, folders and trials.md count from 0).
        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            values = trial.hyperparameters.values
            shown = ", ".join(f"{k}={v}" for k, v in decode_values(self.search_.grid, values).items())
            if "tuner/epochs" in values:
                shown += f", {values['tuner/epochs']} epochs"
            log.log(self._level(), "Trial %s: %s (%s)", trial.trial_id, shown, self.get_trial_dir(trial.trial_id))

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self.trials_run += 1
            record_file = Path(self.get_trial_dir(trial.trial_id)) / "tfsim_trial.json"
            record = json.loads(record_file.read_text()) if record_file.is_file() else {}
            if record.get("status") == "ok":
                objective = self.search_.base.tune.objective
                best = self.oracle.get_best_trials(1)
                best = (f" Best so far: trial {best[0].trial_id}, {objective} {best[0].score:.4f}."
                        if best and best[0].score is not None else "")
                log.log(self._level(), "%s%s", trial_message(record, objective), best)
            if self._report is not None and not self._is_worker():
                self._report(self.oracle)

        def _level(self) -> int:
            return logging.INFO if self.search_.verbose else logging.DEBUG

    return RetrievalTuner


def rows_from(oracle, tune_dir: Path, grid: dict[str, list], metrics: Sequence[str]) -> list[dict]:
    """One report row per trial the oracle knows, completed with each trial's tfsim_trial.json."""
    rows = []
    for trial_id, trial in sorted(oracle.trials.items()):
        hp_values = trial.hyperparameters.values
        try:
            values = decode_values(grid, hp_values)
        except (KeyError, ValueError):
            continue
        row = {"trial": trial_id, **{k: _jsonable(v) for k, v in values.items()}}
        if "tuner/epochs" in hp_values:
            row["epochs"] = int(hp_values["tuner/epochs"])
        record_file = tune_dir / f"trial_{trial_id}" / "tfsim_trial.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        status = str(trial.status)
        if status == "COMPLETED":
            row["status"] = "ok"
            for m in metrics:
                if trial.metrics.exists(m):
                    row[m] = float(trial.metrics.get_last_value(m))
        elif status in ("FAILED", "INVALID"):
            row["status"] = "failed"
            row["reason"] = record.get("reason") or _last_line(trial.message)
        else:
            row["status"] = "running"
        row["seconds"] = record.get("seconds")
        rows.append(row)
    return rows


def _last_line(message: Optional[str]) -> str:
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1].split(": ", 1)[-1] if lines else ""


def _search_record(base: Config, grid: dict, val_classes: list[int]) -> dict:
    resolved = config_lib.to_dict(base)
    for section in ("run", "export", "index"):  # where outputs go does not change the search
        resolved.pop(section, None)
    return {"config": json.loads(json.dumps(resolved)), "grid": {k: [_jsonable(v) for v in vs] for k, vs in grid.items()},
            "val_classes": val_classes}


def _check_tune_dir(tune_dir: Path, record: dict) -> None:
    """Refuses to continue a search in a folder that holds a different search."""
    path = tune_dir / "search.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != record:
            differ = [k for k in ("grid", "val_classes") if previous.get(k) != record.get(k)]
            for section in sorted(set(previous.get("config", {})) | set(record["config"])):
                a, b = previous.get("config", {}).get(section, {}), record["config"].get(section, {})
                differ += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            raise UserInputError(
                f"Search folder {str(tune_dir)!r} holds a different search ({', '.join(differ[:4])} differ). "
                "Choose another name with --name NEW, or delete that folder to start over.")
    tune_dir.mkdir(parents=True, exist_ok=True)
    stages_write_json(path, record)


def tune(cfg: Config, grid_items: Sequence[str], verbose: int = 0, final: bool = True) -> TuneResult:
    """Searches the grid for the config with the best validation objective, then trains it.

    Args:
        cfg: the base config (every trial is this config with the searched values).
        grid_items: `KEY=V1,V2,...` strings (see `parse_grid`).
        verbose: Keras `fit` verbosity inside trials (0 = silent); keras-tuner prints a line
            per trial when > 0.
        final: train the best config on all training classes and evaluate it on the test
            classes when the search ends (the chief does, in distributed tuning).

    Returns:
        A `TuneResult`. A worker of a distributed search returns no rows and no final run.

    Raises:
        UserInputError: a bad key, value or search, before any trial starts; a search in which
            every trial failed.
    """
    import keras_tuner as kt
    from keras_tuner.src.distribute import utils as dist_utils

    config_lib.validate(cfg)
    unset = preflight.unset_pk_keys(cfg)  # P x K left to tfsim: chosen for the trials' training classes
    cfg = config_lib.resolve(cfg)
    if cfg.data.protocol != "class_disjoint":
        raise UserInputError("Invalid value for `data.protocol`: the tune command scores trials on validation "
                             "classes carved from the training classes, so it takes data.protocol=class_disjoint. "
                             f"Received: data.protocol={cfg.data.protocol!r}")
    grid = parse_grid(cfg, grid_items)
    name = cfg.tune.name or cfg.run.name
    root = Path(cfg.run.root) / "tune"
    tune_dir = root / name
    preflight.check_writable(tune_dir, "run.root")
    if final and cfg.export.enabled:
        preflight.check_writable(cfg.export.root, "export.root")
    search = _Search(cfg, grid, tune_dir, verbose)
    # Trials train on the fewest classes; the P x K chosen for them is kept by the final run too.
    cfg = search.base = preflight.choose_pk(cfg, search.trial_split.train.labels, 1, unset)
    size = check_search(cfg, grid, search.trial_split)
    val_ids = np.unique(search.trial_split.test.labels).tolist()
    val_names = [search.split.images.class_names[c] for c in val_ids]
    log.info("Searching %d combinations of %s; trials train on %d classes and are scored on %d validation "
             "classes (%s); the test classes are not used until the final run.",
             size, list(grid), len(np.unique(search.trial_split.train.labels)), len(val_names),
             summarize_names(val_names, full_list=str(tune_dir / "trials.md")))
    _check_tune_dir(tune_dir, _search_record(cfg, grid, val_ids))

    metrics = search.metrics
    distributed = dist_utils.has_chief_oracle()
    is_worker = distributed and not dist_utils.is_chief_oracle()
    header = (f"Search `{name}`: {cfg.tune.tuner} over {list(grid)}, objective **{cfg.tune.objective}** on "
              f"validation classes {val_names} (carved from the training classes). Best first.")
    if cfg.whitening.enabled:
        header += ("\n\nMetrics are those of each trial's model with its whitening, as it is exported; the held-out "
                   "metrics printed at each epoch of a trial (and in TensorBoard) are the network's before whitening "
                   "(`unwhitened` in `trial_N/tfsim_trial.json`).")

    def report(oracle) -> list[dict]:
        rows = tuning_report.sort_rows(rows_from(oracle, tune_dir, grid, metrics), cfg.tune.objective)
        tuning_report.write_tables(tune_dir, rows, list(grid), metrics, cfg.tune.objective, header)
        tuning_report.plot_objective(tune_dir / "objective.png", rows, list(grid), cfg.tune.objective)
        return rows

    tuner = _tuner_class()(_make_oracle(cfg, grid, size), search, on_trial_end=report,
                           directory=str(root), project_name=name, overwrite=False)
    tuner.search(verbose=0)  # (the trial lines are RetrievalTuner's)
    if is_worker:
        log.info("Worker %s: the search is over (%d trials run here).", tuner.tuner_id, tuner.trials_run)
        return TuneResult(tune_dir, [], None, None, tuner.trials_run, val_names)

    rows = report(tuner.oracle)
    if not rows or rows[0]["status"] != "ok":
        raise UserInputError(f"No trial of the search finished; the reasons are in {tune_dir / 'trials.md'}.")
    # rows[0], not oracle.get_best_trials(): ties go to the lowest trial id, the same on every resume
    best = best_config(cfg, {k: rows[0][k] for k in grid}, name)
    best_file = tune_dir / "best.json"
    stages_write_json(best_file, {"base": None, **json.loads(json.dumps(config_lib.to_dict(best)))})
    result = None
    if final:
        import keras
        keras.backend.clear_session()
        result = train(best, resume=True, verbose=verbose)
    return TuneResult(tune_dir, rows, best, result, tuner.trials_run, val_names)
