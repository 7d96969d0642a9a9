"""One trial: a whole `tfsim.training.train` run of the trial's config (the same code path as the
train command) on the training classes minus the validation classes, scored on the validation
classes; the test classes are never loaded into a trial."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Optional

import keras
import keras_tuner
import numpy as np

from tfsim import options
from tfsim.config import Config, TuneConfig
from tfsim.errors import UserInputError
from tfsim.training import task
from tfsim.training.task import Split, load_split
from tfsim.training.run import train
from tfsim.tuning import report
from tfsim.tuning.space import decode_values, encode_space, json_value, trial_config

log = logging.getLogger(__name__)


def metric_names(cfg: Config) -> list[str]:
    """The scalar retrieval metrics a trial reports, in table order."""
    return options.scalar_metrics(cfg.eval.recall_ks)


def validation_split(split: Split, tune: TuneConfig) -> Split:
    """The split a trial sees: the training classes minus the validation classes (`tune.val_classes`,
    or a `tune.seed`-ed `tune.val_fraction` of them) to train on, the validation classes held out.

    Raises:
        UserInputError: validation classes that are not training classes, or too few classes
            left to train on.
    """
    return task.validation_split(split, tune.val_fraction, tune.seed, tune.val_classes,
                                 keys="tune.val_fraction / tune.val_classes")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if isinstance(err, UserInputError) else f"{type(err).__name__}: {text}"


class TrialRunner:
    """What every trial of a search shares (base config, grid, data, folder) and how one runs.

    Attributes:
        base: the resolved base config, P x K chosen for the trials' training classes.
        grid: the searched keys and values (`tfsim.tuning.space.parse_grid`).
        tune_dir: the search's folder.
        verbose: Keras `fit` verbosity inside trials.
        metrics: what a trial reports (`metric_names`).
        split: the run's data (training and test classes).
        trial_split: what trials train on and are scored on (`validation_split`).
    """

    def __init__(self, base: Config, grid: dict[str, list], tune_dir: Path, verbose):
        self.base, self.grid, self.tune_dir, self.verbose = base, grid, tune_dir, verbose
        self.metrics = metric_names(base)
        self.split = load_split(base)
        self.trial_split = validation_split(self.split, base.tune)

    @property
    def validation_class_ids(self) -> list[int]:
        return np.unique(self.trial_split.test.labels).tolist()

    def run(self, trial_id: str, hp_values: dict, trial_dir: Path) -> dict[str, float]:
        """Trains and scores one trial in `trial_dir/run/` and writes its record.

        Args:
            trial_id: keras-tuner's id.
            hp_values: keras-tuner's values for the trial (`tuner/epochs` for Hyperband).
            trial_dir: keras-tuner's folder of the trial.

        Returns:
            The trial's metrics on the validation classes.

        Raises:
            keras_tuner.errors.FailedTrialError: with a one-line reason, whatever the trial
                raised (keras-tuner records the trial as failed and the search goes on).
        """
        values = decode_values(self.grid, hp_values)
        epochs: Optional[int] = hp_values.get("tuner/epochs")
        record = {"trial": trial_id, "values": {k: json_value(v) for k, v in values.items()}, "status": "running"}
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
            report.write_trial_record(trial_dir, record)
            log.warning("Trial %s failed: %s", trial_id, record["reason"])
            raise keras_tuner.errors.FailedTrialError(record["reason"]) from err
        record.update(status="ok", metrics=metrics, seconds=time.time() - start)
        if isinstance(result.metrics.get("unwhitened"), dict):  # what the epoch lines show (see trial_message)
            record["unwhitened"] = {m: float(result.metrics["unwhitened"][m]) for m in self.metrics}
        report.write_trial_record(trial_dir, record)
        space = encode_space(self.grid)
        shown = {k: hp_values[k] for k in space}
        if epochs is not None:
            shown["tuner/epochs"] = int(epochs)
        report.write_hparams_trial(trial_dir / "run" / "tensorboard", report.trial_name(self.tune_dir.name, trial_id),
                                   shown, metrics, space)
        return metrics
