"""Hyper-parameter search with keras-tuner, scored by retrieval on classes the trial never
trained on, and never on the test classes: `tune(cfg, grid_items)`.

    config + `--grid KEY=V1,V2` items        space.py: every value typed by the config, every
                                             combination validated and the sampler checked
                                             against the trials' data before any trial starts
      -> the validation split                trial.py: the training classes split again by class
                                             (`tune.val_classes` or a seeded `tune.val_fraction`);
                                             `data.test_classes` never enter a trial
      -> keras-tuner's oracle and tuner      search.py: one `Choice` per searched key, the oracle
                                             of `tune.tuner`, each trial a whole `training.train`
                                             run in `trial_NNNN/run/` (export, index, baselines off)
      -> trials.csv, trials.md, objective.png, TensorBoard hparams   report.py (after every trial)
      -> best.json, then `train(best)` on all training classes, evaluated on the test classes
         (`runs/<name>_best/`, exported as the config says): the figure to report.

keras_tuner_adapter.py is the only module that uses keras-tuner's private API (the grid
oracle's resumable state, the distributed role); its docstring says what it relies on.

Folder (`<run.root>/tune/<name>/`): keras-tuner's project (oracle.json and
trial_NNNN/trial.json, which resuming reads) and, per trial, `trial_NNNN/run/` (a run folder)
and `trial_NNNN/tfsim_trial.json` (values, metrics, seconds, status and reason); `search.json`
(what was searched: a different search under the same name is refused), the tables, the plot
and best.json.

Faults: the same command after a kill continues the search: finished trials are not run
again, the interrupted one is handed out again and resumes from its run folder's last epoch.
A trial that raises (an impossible combination, a diverging loss, out of memory) is recorded
as failed with its reason, and the search goes on.

Several machines: keras-tuner's distributed tuning. The process with
`KERASTUNER_TUNER_ID=chief` serves the oracle at `KERASTUNER_ORACLE_IP:PORT` and, when the
search ends, writes the report and trains the best config; processes with other ids run
trials. All of them must see the same `<run.root>/tune/<name>/` folder (a shared file system).

Hyperband trains each trial from scratch for the `tuner/epochs` the oracle gives (up to
`train.epochs`); it does not continue from a parent trial's checkpoint, since the cosine
learning-rate schedule depends on the number of epochs.
"""

from tfsim.tuning.search import TuneResult, tune
from tfsim.tuning.space import parse_grid

__all__ = ["TuneResult", "parse_grid", "tune"]
