"""The search: keras-tuner's oracle for `tune.tuner`, a tuner whose trial is `TrialRunner.run`,
the search folder (refusing a different search, resuming the same one), distributed roles, and
the best config trained on all training classes when the search ends."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import keras
import keras_tuner
import numpy as np

from tfsim import config as config_lib
from tfsim.config import Config
from tfsim.errors import UserInputError
from tfsim.files import write_json
from tfsim.training import preflight
from tfsim.training.loop import summarize_names
from tfsim.training.run import TrainResult, train
from tfsim.tuning import keras_tuner_adapter, report
from tfsim.tuning.space import best_config, check_search, decode_values, encode_space, json_value, parse_grid
from tfsim.tuning.trial import TrialRunner

log = logging.getLogger(__name__)

# keras-tuner stops a search after this many failures in a row (3 by default); for tfsim a failed
# trial is a result, recorded with its reason, never a reason to stop.
_NEVER_STOP_ON_FAILURES = 10 ** 9


@dataclasses.dataclass
class TuneResult:
    """What a search produced.

    Attributes:
        tune_dir: the search's folder.
        grid: the searched keys and their values.
        rows: one per trial, best first (`tfsim.tuning.report`); empty on a worker.
        best_config: the best trial's values applied to the base config (None on a worker).
        best_run: `best_config` trained on all training classes and evaluated on the test
            classes, or None (not asked for, or a worker).
        new_trials: trials this call ran to the end (0 on a finished search).
        val_classes: the names of the validation classes.
    """

    tune_dir: Path
    grid: dict[str, list]
    rows: list[dict]
    best_config: Optional[Config]
    best_run: Optional[TrainResult]
    new_trials: int
    val_classes: list[str]


def make_oracle(cfg: Config, grid: dict[str, list], size: int) -> keras_tuner.Oracle:
    """The keras-tuner oracle of `cfg.tune.tuner` over `grid` (`size` combinations), seeded by `tune.seed`."""
    t = cfg.tune
    hps = keras_tuner.HyperParameters()
    for key, values in encode_space(grid).items():
        hps.Choice(key, values)
    common = dict(objective=keras_tuner.Objective(t.objective, "max"), hyperparameters=hps,
                  seed=t.seed + 1,  # keras-tuner takes a seed of 0 as "draw one"; tfsim's is reproducible
                  max_consecutive_failed_trials=_NEVER_STOP_ON_FAILURES)
    max_trials = t.max_trials or size
    if t.tuner == "grid":
        return keras_tuner_adapter.ResumableGridSearchOracle(max_trials=max_trials, **common)
    if t.tuner == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if t.tuner == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=max_trials, **common)
    return keras_tuner.oracles.HyperbandOracle(max_epochs=cfg.train.epochs, factor=3, **common)


class RetrievalTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """keras-tuner's `BaseTuner` whose trial is a tfsim training run (`TrialRunner.run`).

    Args:
        oracle: from `make_oracle`.
        runner: runs the trials.
        on_trial_end: called with the oracle after every trial (the report), or None.
        **kwargs: `BaseTuner`'s (`directory`, `project_name`, `overwrite`).
    """

    def __init__(self, oracle, runner: TrialRunner, on_trial_end=None, **kwargs):
        self.runner = runner
        self.trials_run = 0
        self._after_trial = on_trial_end
        super().__init__(oracle, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        return self.runner.run(trial.trial_id, trial.hyperparameters.values, Path(self.get_trial_dir(trial.trial_id)))

    # These lines replace keras-tuner's own ("Running Trial #1"), which count from 1 while trial
    # ids, folders and trials.md count from 0.
    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        values = trial.hyperparameters.values
        shown = ", ".join(f"{k}={v}" for k, v in decode_values(self.runner.grid, values).items())
        if "tuner/epochs" in values:
            shown += f", {values['tuner/epochs']} epochs"
        log.log(self._log_level(), "Trial %s: %s (%s)", trial.trial_id, shown, self.get_trial_dir(trial.trial_id))

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.trials_run += 1
        record = report.read_trial_record(Path(self.get_trial_dir(trial.trial_id)))
        if record.get("status") == "ok":
            objective = self.runner.base.tune.objective
            best = self.oracle.get_best_trials(1)
            best = (f" Best so far: trial {best[0].trial_id}, {objective} {best[0].score:.4f}."
                    if best and best[0].score is not None else "")
            log.log(self._log_level(), "%s%s", report.trial_message(record, objective), best)
        if self._after_trial is not None:
            self._after_trial(self.oracle)

    def _log_level(self) -> int:
        return logging.INFO if self.runner.verbose else logging.DEBUG


def _search_record(base: Config, grid: dict, val_classes: list[int]) -> dict:
    """What identifies a search: the base config (less where outputs go), the grid, the validation classes."""
    resolved = config_lib.to_dict(base)
    for section in ("run", "export", "index"):
        resolved.pop(section, None)
    return {"config": json.loads(json.dumps(resolved)),
            "grid": {k: [json_value(v) for v in vs] for k, vs in grid.items()}, "val_classes": val_classes}


def _claim_search_folder(tune_dir: Path, record: dict) -> None:
    """Writes `search.json`, or refuses a folder that holds a different search (naming what differs)."""
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
    write_json(path, record, unique=True)  # the chief and workers of a distributed search all write it


def tune(cfg: Config, grid_items: Sequence[str], verbose=0, train_best: bool = True) -> TuneResult:
    """Searches the grid for the config with the best validation objective, then trains it.

    Args:
        cfg: the base config (every trial is this config with the searched values).
        grid_items: `KEY=V1,V2,...` strings (see `tfsim.tuning.space.parse_grid`).
        verbose: Keras `fit` verbosity inside trials (0 = silent); a line per trial is logged at
            INFO when not 0.
        train_best: train the best config on all training classes and evaluate it on the test
            classes when the search ends (the chief does, in distributed tuning).

    Returns:
        A `TuneResult`. A worker of a distributed search returns no rows and no best run.

    Raises:
        UserInputError: a bad key, value or search, before any trial starts; an installed
            keras-tuner whose private API changed; a search in which every trial failed.

    Example:
        >>> result = tune(config.load("default", ["sampler.classes_per_batch=4"]), ["loss.margin=0.2,0.5"])
        >>> result.rows[0]["loss.margin"], result.best_run.metrics["map@r"]
    """
    keras_tuner_adapter.check_private_api()
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
    if train_best and cfg.export.enabled:
        preflight.check_writable(cfg.export.root, "export.root")
    runner = TrialRunner(cfg, grid, tune_dir, verbose)
    # Trials train on the fewest classes; the P x K chosen for them is kept by the best run too.
    cfg = runner.base = preflight.choose_pk(cfg, runner.trial_split.train.labels, 1, unset)
    size = check_search(cfg, grid, runner.trial_split)
    val_ids = runner.validation_class_ids
    val_names = [runner.split.dataset.class_names[c] for c in val_ids]
    log.info("Searching %d combinations of %s; trials train on %d classes and are scored on %d validation "
             "classes (%s); the test classes are used only by the best config's run.",
             size, list(grid), len(np.unique(runner.trial_split.train.labels)), len(val_names),
             summarize_names(val_names, full_list=str(tune_dir / "trials.md")))
    _claim_search_folder(tune_dir, _search_record(cfg, grid, val_ids))

    role = keras_tuner_adapter.distributed_role()
    header = (f"Search `{name}`: {cfg.tune.tuner} over {list(grid)}, objective **{cfg.tune.objective}** on "
              f"validation classes {val_names} (carved from the training classes). Best first.")
    if cfg.whitening.enabled:
        header += ("\n\nMetrics are those of each trial's model with its whitening (if `whitening.enabled=auto` "
                   "chose one on the trial's training classes), as it is exported; the held-out "
                   "metrics printed at each epoch of a trial (and in TensorBoard) are the network's before whitening "
                   "(`unwhitened` in `trial_N/tfsim_trial.json`).")

    def write_report(oracle) -> list[dict]:
        rows = report.sort_rows(report.rows_from_oracle(oracle, tune_dir, grid, runner.metrics), cfg.tune.objective)
        report.write_tables(tune_dir, rows, list(grid), runner.metrics, cfg.tune.objective, header)
        report.plot_objective(tune_dir / "objective.png", rows, list(grid), cfg.tune.objective)
        return rows

    # A worker's oracle is the chief's, over gRPC: the chief writes the report.
    tuner = RetrievalTuner(make_oracle(cfg, grid, size), runner,
                           on_trial_end=None if role == "worker" else write_report,
                           directory=str(root), project_name=name, overwrite=False)
    tuner.search(verbose=0)  # keras-tuner's own trial lines off: RetrievalTuner logs its own
    if role == "worker":
        log.info("Worker %s: the search is over (%d trials run here).", tuner.tuner_id, tuner.trials_run)
        return TuneResult(tune_dir, grid, [], None, None, tuner.trials_run, val_names)

    rows = write_report(tuner.oracle)
    if not rows or rows[0]["status"] != "ok":
        raise UserInputError(f"No trial of the search finished; the reasons are in {tune_dir / 'trials.md'}.")
    # rows[0], not oracle.get_best_trials(): ties go to the lowest trial id, the same on every resume
    best = best_config(cfg, {k: rows[0][k] for k in grid}, name)
    write_json(tune_dir / "best.json", {"base": None, **json.loads(json.dumps(config_lib.to_dict(best)))})
    best_run = None
    if train_best:
        keras.backend.clear_session()
        best_run = train(best, resume=True, verbose=verbose)
    return TuneResult(tune_dir, grid, rows, best, best_run, tuner.trials_run, val_names)
