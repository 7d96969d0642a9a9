"""`fit(cfg, run_dir, split)`: the training loop, from data to checkpoints.

    Task(cfg) (`tfsim.training.task`): the training batches, the model, loss and optimiser, the
      held-out evaluation and the callbacks
      -> under the tf.distribute strategy and the `train.precision` dtype policy: the model built
         and compiled, or loaded from the run's furthest intact checkpoint
      -> `model.fit` (or `distributed.fit_loop` across hosts) to `train.epochs`
      -> `<run_dir>/checkpoints/epoch-NNNN.keras` (+ partial-EEEE-SSSSSS.keras every
         `train.checkpoint_every_steps` steps, best.keras with `train.select_best`)

Its only output is the checkpoint: the stages after training (`tfsim.training.stages`)
read it back. Resume: if `run_dir` holds a checkpoint, training continues from the step after
it (the rest of an interrupted epoch first), on the same batches an uninterrupted run would see
(batches are indexed by global step); a run already at `train.epochs` is not rebuilt at all.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from tfsim import runs
from tfsim.config import Config
from tfsim.data import sources
from tfsim.errors import UserInputError
from tfsim.training import distributed, preflight
from tfsim.training.task import Split, Task

log = logging.getLogger(__name__)


def progress_verbosity(verbose: Union[int, str]) -> int:
    """Keras `fit` verbosity for where stdout goes.

    1 or "auto": a per-step progress bar when stdout is a terminal; otherwise (a file, a pipe,
    a CI log) one line per epoch (2), since a bar written there is one long line of carriage
    returns and escape codes. 0 (silent) and 2 (one line per epoch) are kept as they are.

    Raises:
        ValueError: any other value.
    """
    if verbose in (1, "auto"):
        return 1 if _stdout_is_terminal() else 2
    if verbose in (0, 2):
        return int(verbose)
    raise ValueError(f"Invalid value for `verbose`: expected 0, 1, 2 or 'auto'. Received: verbose={verbose!r}")


def _stdout_is_terminal() -> bool:
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


class EndProgressLine(keras.callbacks.Callback):
    """Ends the progress bar's line at each epoch end, before the callbacks after it log (held-out
    Recall@K): on a terminal the bar has no newline until Keras redraws it with the epoch's
    metrics, so a log line would otherwise continue the bar's line. Place it first."""

    def on_epoch_end(self, epoch, logs=None):
        sys.stdout.write("\n")
        sys.stdout.flush()


def summarize_names(names: Sequence[str], limit: int = 8, full_list: Optional[str] = None) -> str:
    """`names` for a log line: all of them up to `limit`, else the first `limit` and how many more
    (`full_list`: where the reader finds them all, said only when some are left out).

    Example:
        >>> summarize_names(["a", "b", "c"], limit=2, full_list="data_report.json")
        'a, b, ... and 1 more (all in data_report.json)'
    """
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    where = f" (all in {full_list})" if full_list else ""
    return f"{', '.join(names[:limit])}, ... and {len(names) - limit:,} more{where}"


@dataclasses.dataclass
class FitResult:
    """What training left: the checkpoint, and what this call did."""

    checkpoint: Path
    epochs: int
    fit_seconds: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    selection: Optional[dict] = None  # train.select_best: checkpoints/best.json


def get_strategy(name: str) -> tf.distribute.Strategy:
    """"default" (one device), "mirrored" (all local devices), "multi_worker" (several hosts, from
    TF_CONFIG: `training.distributed`) or "auto" (mirrored if > 1 GPU)."""
    if name == "multi_worker":
        return distributed.multi_worker_strategy()
    if name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def fit(cfg: Config, run_dir: Path, split: Split, resume: bool = True, verbose: Union[int, str] = "auto",
        strategy: Optional[tf.distribute.Strategy] = None) -> FitResult:
    """Trains the config's model on `split.train` and checkpoints it under `run_dir/checkpoints`.

    Args:
        cfg: a validated, resolved config.
        run_dir: the run folder (prepared by `train`).
        split: the run's data as training sees it (`Task.fit_split`).
        resume: continue from the run folder's checkpoint if there is one.
        verbose: Keras `fit` verbosity (`progress_verbosity`): "auto" or 1 = a progress bar on a
            terminal, one line per epoch elsewhere; 2 = one line per epoch; 0 = silent.
        strategy: the tf.distribute strategy (default: `get_strategy(train.strategy)`); a
            multi-worker one is created by the caller, before any other TensorFlow work.

    Returns:
        A `FitResult` naming the final checkpoint.
    """
    task, t = Task(cfg), cfg.train
    steps_per_epoch = task.steps_per_epoch(len(split.train))
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = resume_checkpoint(ckpt_dir) if resume else None  # (path, completed epochs, steps into the next)
    best = runs.read_best(ckpt_dir) if (t.select_best and checkpoint is not None) else None
    if checkpoint is not None and checkpoint[2] == 0 and (checkpoint[1] >= t.epochs or
                                                          (best or {}).get("stopped_early")):
        return _result(cfg, ckpt_dir, 0.0, [])

    keras.utils.set_random_seed(t.seed)
    train_set = task.training_set(split.train)
    strategy = strategy or get_strategy(t.strategy)
    preflight.check(cfg, train_set.labels, strategy.num_replicas_in_sync)  # before any model is built
    log.info("Training on %s images of %s classes; evaluating on %s images of %s held-out classes: %s.",
             f"{len(train_set):,}", f"{len(np.unique(train_set.labels)):,}", f"{len(split.test):,}",
             f"{len(split.test_class_names):,}", summarize_names(split.test_class_names, full_list="metrics.json"))
    decoding = time.time()
    # The training images are decoded on a thread while the model is built, compiled and its optimizer's
    # slots made (TensorFlow's decoding runs outside the GIL): about 0.3 s of a short run.
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tfsim-decode")
    decoded = pool.submit(task.decoded_once, train_set)

    initial_step = 0
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(t.precision)  # mixed precision: set while the model is built and trained
    try:
        with strategy.scope():
            if checkpoint is not None:
                model = _load_checkpoint(checkpoint[0])
                initial_step = checkpoint[1] * steps_per_epoch + checkpoint[2]
                log.info("Resuming %s from epoch %d%s.", run_dir, checkpoint[1],
                         f", step {checkpoint[2]} of the next" if checkpoint[2] else "")
            else:
                model = task.build_model(int(train_set.labels.max()) + 1)
                model.compile(optimizer=task.build_optimizer(t.epochs * steps_per_epoch), loss=task.build_loss(),
                              jit_compile=t.jit_compile)
            if not model.optimizer.built:
                # Its slots made now, not while `fit` traces the training step: a variable created during
                # a trace makes TensorFlow trace the step a second time (about 1 s of every run).
                model.optimizer.build(model.trainable_variables)
        train_set, how = decoded.result()
        # (part of the training time the run reports: decoding, overlapped with building the model)
        decode_seconds = time.time() - decoding
        log.info("Training images: %s.", how)
        return _loop(task, run_dir, split.test, train_set, model, steps_per_epoch, initial_step, verbose, strategy,
                     decode_seconds)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # (done by now, unless building the model failed)
        keras.config.set_dtype_policy(policy)


def _load_checkpoint(path: Path) -> keras.Model:
    """The model (optimiser state included) saved in a checkpoint that `runs.choose_checkpoint` found intact."""
    try:
        return keras.models.load_model(path)
    except (ValueError, TypeError, KeyError, OSError) as err:  # a valid archive Keras cannot load
        raise UserInputError(
            f"Cannot resume from {str(path)!r}: its archive is intact but Keras cannot load it "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Move it out of "
            "that folder to resume from the one before, or train under a new name (--set "
            "run.name=NEW).") from None


def resume_checkpoint(ckpt_dir: Path) -> Optional[tuple[Path, int, int]]:
    """The furthest checkpoint under `ckpt_dir` that is intact (`tfsim.runs.choose_checkpoint`), or None
    if there is none; damaged ones further on are logged as skipped.

    Raises:
        UserInputError: there are checkpoints but none is intact.
    """
    point, skipped = runs.choose_checkpoint(ckpt_dir)
    if point is None and skipped:
        raise runs.no_valid_checkpoint(ckpt_dir, skipped, "Move the damaged files out of that folder to train "
                                       "from scratch, or train under a new name (--set run.name=NEW).")
    if skipped:
        runs.log_skipped(skipped, point[0])
    return point


def _loop(task: Task, run_dir: Path, test: sources.ImageSet, train_set: sources.ImageSet, model: keras.Model,
          steps_per_epoch: int, initial_step: int, verbose: Union[int, str],
          strategy: tf.distribute.Strategy, decode_seconds: float = 0.0) -> FitResult:
    """Fits `model` from global step `initial_step` to the end of the run (its seconds, with the
    `decode_seconds` from the start of decoding the training images until both they and the model
    were ready, are `fit_seconds`). A run resumed within an epoch
    (a partial checkpoint) fits the rest of that epoch first, as a shorter epoch. Under a multi-worker
    strategy, `distributed.fit_loop` (Keras's `model.fit` cannot take its batches), each task writing
    to its `worker_dir`."""
    cfg, epochs = task.cfg, task.cfg.train.epochs
    verbose = progress_verbosity(verbose)
    multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    out_dir = distributed.worker_dir(run_dir, strategy) if multi else run_dir
    ckpt_dir = out_dir / "checkpoints"
    evaluation = task.build_metrics(test, model, eager=multi)
    callbacks = task.build_callbacks(evaluation, test, run_dir, out_dir, steps_per_epoch, initial_step, strategy)
    if evaluation is not None and verbose == 1:  # the evaluation's log line, on a line of its own below the bar
        callbacks.insert(0, EndProgressLine())
    epoch, steps_into_epoch = divmod(initial_step, steps_per_epoch)

    start = time.time() - decode_seconds
    if multi:
        batches = distributed.worker_batches(strategy, lambda: task.training_batches(train_set, initial_step,
                                                                                     steps_per_epoch),
                                             task.global_batch_size)
        distributed.fit_loop(model, strategy, batches, epochs, steps_per_epoch, epoch, steps_into_epoch, callbacks,
                             verbose)
        return _result(cfg, run_dir / "checkpoints" if distributed.is_chief(strategy) else ckpt_dir,
                       time.time() - start, evaluation.history if evaluation else [])
    if steps_into_epoch:  # the rest of the interrupted epoch
        model.fit(task.training_batches(train_set, initial_step, steps_per_epoch), epochs=epoch + 1,
                  steps_per_epoch=steps_per_epoch - steps_into_epoch, initial_epoch=epoch, callbacks=callbacks,
                  verbose=verbose, shuffle=False)
        epoch += 1
    if epoch < epochs and not model.stop_training:
        model.fit(task.training_batches(train_set, epoch * steps_per_epoch, steps_per_epoch), epochs=epochs,
                  steps_per_epoch=steps_per_epoch, initial_epoch=epoch, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
    return _result(cfg, ckpt_dir, time.time() - start, evaluation.history if evaluation else [])


def _result(cfg: Config, ckpt_dir: Path, seconds: float, history: list) -> FitResult:
    """The checkpoint training leaves: the last epoch's, or with `train.select_best` the best one."""
    path, epochs = runs.latest_checkpoint(ckpt_dir)
    selection = runs.read_best(ckpt_dir) if cfg.train.select_best else None
    if selection is not None:
        path = ckpt_dir / "best.keras"
    return FitResult(path, epochs, seconds, history, selection)
