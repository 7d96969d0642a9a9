"""`train(cfg)`: one run, from data to a served index, as a sequence of stages joined by files.

    config.validate / config.resolve -> the run folder (`<run.root>/<run.name>/`, config.json)
      -> Task.build_inputs: images, training classes, held-out classes (`tfsim.training.task`)
      -> fit -> checkpoints/epoch-NNNN.keras
      -> runs.load_embedder -> stages.choose_whitening (whitening.enabled=auto: on validation classes)
      -> stages.whitening_stage -> whitening.npz
      -> runs.final_model (embedder -> Whitening: evaluated, exported and indexed)
      -> stages.baselines_stage -> baselines.json (cached)
      -> stages.evaluate_stage -> metrics.json, samples/
      -> stages.export_stage -> saved_models/<name>/<version>/ with the ScaNN index inside (and,
         with validation classes held out by train.select_best, the match threshold calibrated on
         them and measured on the test classes: metrics.json's "calibration")

TensorBoard (`tensorboard/`, see `tfsim.training.tensorboard`): loss, learning rate, images/s,
held-out Recall@K and MAP@R per epoch, pictures of held-out neighbours, the projector of the
final held-out embeddings, all in one TensorBoard run per run folder (hparams only for tune trials).

Run folder: config.json, data_report.json (what the source found: images per class, files
skipped and why; what the split and the sampler do with the classes), checkpoints/, tensorboard/,
whitening.npz, baselines.json, metrics.json, samples/ (a few held-out query images).

While a run is being written, `.lock` in its folder names the process (`tfsim.locks`); a second
process is refused. A non-empty folder that is not a tfsim run (no config.json that tfsim wrote)
is refused, not overwritten.

Re-running a finished run skips training; sections applied after training (`eval`,
`whitening`, `export`, `index`) may change, so that refits the whitening, re-evaluates and
exports a new version only if the exported model or index settings changed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np

from tfsim import config as config_lib
from tfsim import locks, runs
from tfsim.files import write_json
from tfsim.config import Config
from tfsim.errors import UserInputError
from tfsim.training import distributed, preflight, stages, tensorboard
from tfsim.runs import resume_point
from tfsim.training.loop import fit, get_strategy
from tfsim.training.task import Split, Task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    metrics: dict
    export_dir: Optional[Path]
    index_dir: Optional[Path]
    test_classes: list[str]
    seconds: float
    fit_seconds: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    retrieval_dirs: list = dataclasses.field(default_factory=list)


_POST_TRAINING_SECTIONS = ("eval", "whitening", "export", "index", "tune")


def _check_run_dir(cfg: Config, run_dir: Path, resume: bool, key: str = "run.root/run.name",
                   later: tuple[str, ...] = ()) -> None:
    """Refuses a non-empty folder that is not a tfsim run, and a run folder that holds a checkpoint of
    another config (or any, without resume). `later`: sampler keys chosen from the data
    (`preflight.choose_pk`), compared once they are chosen."""
    runs.check_run_folder(run_dir, key)
    cfg_file = run_dir / "config.json"
    resolved = config_lib.to_dict(cfg)
    if cfg_file.is_file() and resume_point(run_dir / "checkpoints") is not None:
        previous = json.loads(cfg_file.read_text())
        current = json.loads(json.dumps(resolved))
        # Sections applied after training may change on resume (e.g. refit the whitening with
        # another power without retraining); everything that shapes the weights may not.
        # A key the run folder's config.json does not have was added to tfsim after that run
        # (e.g. sampler.small_classes): at its default it does what that run did.
        defaults = json.loads(json.dumps(config_lib.to_dict(config_lib.resolve(Config()))))

        def same(section: str, key: str) -> bool:
            before, now = previous.get(section, {}), current.get(section, {})
            if key not in before and key in now:
                return now[key] == defaults.get(section, {}).get(key)
            return before.get(key) == now.get(key)

        differ = [f"{section}.{key}" for section in sorted(set(previous) | set(current))
                  if section not in _POST_TRAINING_SECTIONS
                  for key in sorted(set(previous.get(section, {})) | set(current.get(section, {})))
                  if not same(section, key) and not (section == "sampler" and key in later)]
        if differ:
            shown = ", ".join(f"{k}={previous.get(k.split('.')[0], {}).get(k.split('.')[1])!r} there, "
                              f"{current.get(k.split('.')[0], {}).get(k.split('.')[1])!r} now" for k in differ[:3])
            raise UserInputError(
                f"Run folder {str(run_dir)!r} holds a checkpoint of a run with a different config ({shown}"
                f"{', ...' if len(differ) > 3 else ''}). Choose another name with --set run.name=NEW, or delete "
                "that folder to start over.")
        if not resume:
            raise UserInputError(
                f"Run folder {str(run_dir)!r} already holds a checkpoint. Resume it (drop --no-resume), "
                "choose another name with --set run.name=NEW, or delete the folder.")


def _write_config(cfg: Config, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config_lib.to_dict(cfg))


def _selection_report(trained, fit_split) -> dict:
    """metrics.json's "selected" entry with `train.select_best` (else nothing)."""
    if trained.selection is None:
        return {}
    chosen = trained.selection
    return {"selected": {"epoch": chosen["epoch"], "metric": chosen["metric"], "value": chosen["value"],
                         "stopped_early": chosen["stopped_early"], "epochs_trained": trained.epochs,
                         "validation_classes": fit_split.test_class_names,
                         "values": [v["value"] for v in chosen["values"]]}}


def train(cfg: Config, run_dir: Optional[os.PathLike] = None, resume: bool = True, verbose: Union[int, str] = "auto",
          split: Optional[Split] = None) -> TrainResult:
    """Trains, evaluates on held-out classes, exports and indexes (see module doc).

    Args:
        cfg: the run's config (validated and resolved here).
        run_dir: overrides `<run.root>/<run.name>`.
        resume: continue from the run folder's checkpoint if there is one.
        verbose: Keras `fit` verbosity: "auto" (or 1) a progress bar on a terminal and one line per
            epoch elsewhere (a file, a pipe), 2 one line per epoch, 0 silent.
        split: the images to train and evaluate on, instead of `Task(cfg).build_inputs()` (the tune
            command passes each trial its training classes minus validation classes, and the
            validation classes as the held-out set).

    Returns:
        A `TrainResult`.

    Raises:
        UserInputError: bad config or data, a run folder that belongs to another config or is not a
            tfsim run, a run folder another process is using (`tfsim.locks.LockHeld`), a full disk
            (`tfsim.errors.DiskFull`), or checkpoints that are all damaged.
    """
    start = time.time()
    config_lib.validate(cfg)
    unset = preflight.unset_pk_keys(cfg)  # P x K left to tfsim: chosen once the training classes are known
    cfg = config_lib.resolve(cfg)
    run_dir_arg = run_dir
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run.root) / cfg.run.name
    # Several hosts: the strategy comes first (its collectives must be set up before any other
    # TensorFlow work); only the chief writes the run folder and runs the stages after training.
    strategy = get_strategy("multi_worker") if cfg.train.strategy == "multi_worker" else None
    chief = strategy is None or distributed.is_chief(strategy)
    key = "run.root/run.name" if run_dir_arg is None else "--run-dir"
    if not chief:  # (workers write their own folders; the chief holds the run folder's lock)
        _check_run_dir(cfg, run_dir, resume, key, later=unset)
        return _train(cfg, run_dir, resume, verbose, split, start, strategy, chief, unset)
    # Outputs are checked before any work, so a bad path is not found after training; a folder that
    # is not a tfsim run is refused before anything (even a lock file) is written into it.
    runs.check_run_folder(run_dir, key)
    preflight.check_writable(run_dir, "run.root" if run_dir_arg is None else "the run folder")
    if cfg.export.enabled:
        preflight.check_writable(cfg.export.root, "export.root")
    # One process per run folder: a second one is refused with the holder's pid (the lock of a
    # killed process is free, see `tfsim.locks`). A folder the lock created is removed again if
    # the run stops before writing anything (e.g. on a data error).
    created = not run_dir.exists()
    try:
        with locks.folder_lock(run_dir, "run folder"):
            _check_run_dir(cfg, run_dir, resume, key, later=unset)
            # Under the lock no live process writes here: temporary files are a killed one's.
            removed = (runs.remove_temporaries(run_dir)
                       + runs.remove_temporaries(run_dir / "checkpoints"))
            if removed:
                log.info("Removed %d temporary files left in %s by an interrupted run: %s", len(removed), run_dir,
                         ", ".join(removed))
            return _train(cfg, run_dir, resume, verbose, split, start, strategy, chief, unset, key)
    finally:
        if created:
            try:
                run_dir.rmdir()  # only if empty
            except OSError:
                pass


def _train(cfg: Config, run_dir: Path, resume: bool, verbose: Union[int, str], split: Optional[Split], start: float,
           strategy, chief: bool, unset: tuple[str, ...] = (), key: str = "run.root/run.name") -> TrainResult:
    """`train` once the run folder is checked (and locked, on the chief)."""
    task = Task(cfg)
    if split is None:
        split = task.build_inputs()  # data errors stop the run before the run folder is written
    strategy = strategy or get_strategy(cfg.train.strategy)
    fit_split = task.fit_split(split)
    if unset:  # P x K the user left unset: the largest the training classes allow (one log line)
        cfg = preflight.choose_pk(cfg, fit_split.train.labels, strategy.num_replicas_in_sync, unset)
        _check_run_dir(cfg, run_dir, resume, key)
    # The sampler against the data, before the run folder is written (fit checks again, for callers of fit).
    preflight.check(cfg, fit_split.train.labels, strategy.num_replicas_in_sync)
    stages.check_calibration(cfg, fit_split)  # a forced calibration's validation classes, before training
    if chief:
        _write_config(cfg, run_dir)
        # What the source found (counts, skipped files and why) and what the split and sampler do
        # with the classes.
        write_json(run_dir / "data_report.json", {
            **(split.dataset.report or {"source": split.dataset.name, "images": len(split.dataset)}),
            "split": preflight.split_report(cfg, split.train.labels, split.test.labels, split.dataset.class_names)})

    trained = fit(cfg, run_dir, fit_split, resume=resume, verbose=verbose, strategy=strategy)
    if chief and trained.fit_seconds > 0:
        # A checkpoint name was (re)written: a whitening fitted on an earlier file of that name (one
        # that was damaged and retrained) is not this one's.
        (run_dir / "whitening.npz").unlink(missing_ok=True)
    if not chief:  # a worker's part ends with training; the chief evaluates, exports and indexes
        distributed.remove_worker_dir(run_dir, strategy)
        return TrainResult(run_dir=run_dir, metrics={}, export_dir=None, index_dir=None,
                           test_classes=split.test_class_names, seconds=time.time() - start,
                           fit_seconds=trained.fit_seconds, history=trained.history)
    embedder = runs.load_embedder(trained.checkpoint)
    # whitening.enabled=auto: chosen on validation classes (never the test classes); `cfg` says the choice.
    validation = np.unique(fit_split.test.labels) if cfg.train.select_best else None
    cfg, whitening_choice, features = stages.choose_whitening(cfg, embedder, split.train, validation)
    whitening = stages.whitening_stage(cfg, embedder, split.train, run_dir, trained.checkpoint, features=features)
    final = runs.final_model(embedder, whitening)
    baselines = stages.baselines_stage(cfg, run_dir, split.train, split.test)
    kept: dict = {}
    metrics = stages.evaluate_stage(cfg, run_dir, embedder, final, split.test, baselines,
                                    extra={"test_classes": split.test_class_names,
                                           "num_train_images": len(fit_split.train),
                                           **({"whitening": whitening_choice} if whitening_choice else {}),
                                           **_selection_report(trained, fit_split)}, keep=kept)
    log.info("Writing the TensorBoard projector of %s held-out embeddings...", f"{len(split.test):,}")
    tensorboard.write_projector(run_dir / "tensorboard", kept["embeddings"], split.test, seed=cfg.train.seed)
    stages.write_samples(split.test, run_dir / "samples")
    export_dir, index_dir = stages.export_stage(cfg, run_dir, final, metrics, split, kept["embeddings"])
    retrieval_dirs = stages.retrieval_stage(cfg, export_dir)
    return TrainResult(run_dir=run_dir, metrics=metrics, export_dir=export_dir, index_dir=index_dir,
                       test_classes=split.test_class_names, seconds=time.time() - start,
                       fit_seconds=trained.fit_seconds, history=trained.history, retrieval_dirs=retrieval_dirs)
