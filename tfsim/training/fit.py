"""`fit(cfg, run_dir)`: the training stage, from data to checkpoints.

    data (`load_split`) -> P x K / random / triplet batches (`data.pipeline.train_dataset`)
      -> the model (the embedder, or `embedder -> CosineProxies` for proxy losses, labels
         remapped to 0..C-1) built and compiled under a tf.distribute strategy and the
         `train.precision` dtype policy, with the optimiser of `training.optimizers` (per-layer
         multipliers: the proxies' `loss.proxy_lr_multiplier`, the head's
         `train.head_lr_multiplier`); `model.freeze_batchnorm` freezes the backbone's BatchNorm
      -> `model.fit`, callbacks: StopOnNonFiniteLoss -> SyncReplicaStatistics -> TrainingRate
         (learning rate, images/s) -> RetrievalEvaluation (held-out Recall@K per epoch) ->
         NeighbourPictures -> (BestCheckpoint) -> EpochScalars -> ResumableCheckpoint ->
         (StepCheckpoint) (see `training.tensorboard`, `training.callbacks`)
      -> `<run_dir>/checkpoints/epoch-NNNN.keras` (+ partial-EEEE-SSSSSS.keras every
         `train.checkpoint_every_steps` steps, best.keras with `train.select_best`)

Its only output is the checkpoint: the stages after training (`tfsim.training.stages`)
read it back. Resume: if `run_dir` holds a checkpoint, training continues from the step after
it (the rest of an interrupted epoch first), on the same batches an uninterrupted run would see
(batches are indexed by global step); a run already at `train.epochs` is not rebuilt at all.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from tfsim import config as config_lib
from tfsim import runs
from tfsim.config import Config
from tfsim.errors import UserInputError
from tfsim.data import lists, pipeline, sources, splits
from tfsim.evaluation.metrics import query_mask
from tfsim.losses import get_loss, input_kind
from tfsim.losses.quantization import HashingLoss
from tfsim.models import build_embedding_model
from tfsim.models.embedding import HEAD_LAYER
from tfsim.models.proxies import PROXY_LAYER, build_proxy_trainer, embedder_of
from tfsim.training import distributed, preflight
from tfsim.training.callbacks import (BestCheckpoint, ResumableCheckpoint, StepCheckpoint, RetrievalEvaluation, StopOnNonFiniteLoss,
                                     SyncReplicaStatistics)
from tfsim.training.optimizers import build_optimizer
from tfsim.training.tensorboard import EpochScalars, NeighbourPictures, TrainingRate

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
class Split:
    """The run's images: all of them, the training classes and the held-out classes."""

    images: sources.ImageSet
    train: sources.ImageSet
    test: sources.ImageSet

    @property
    def test_class_names(self) -> list[str]:
        return [self.images.class_names[c] for c in np.unique(self.test.labels)]


@dataclasses.dataclass
class FitResult:
    """What training left: the checkpoint, and what this call did."""

    checkpoint: Path
    epochs: int
    fit_seconds: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    selection: Optional[dict] = None  # train.select_best: checkpoints/best.json


def load_data(cfg: config_lib.DataConfig) -> sources.ImageSet:
    """The ImageSet named by the data config."""
    if cfg.source == "default":
        return sources.load_default()
    if cfg.source == "folder":
        return sources.load_folder(cfg.path, on_bad_file=cfg.on_bad_file, max_pixels=cfg.max_pixels)
    if cfg.source == "list":
        return lists.load_list(cfg.path, cfg.image_root, on_bad_file=cfg.on_bad_file, max_pixels=cfg.max_pixels)
    return sources.load_tfds(cfg.tfds_name, cfg.tfds_split, cfg.data_dir, cfg.manual_dir, max_pixels=cfg.max_pixels)


def database_query_split(images: sources.ImageSet) -> Split:
    """`data.protocol=database_query`: train on the "train" split; evaluate every other image as a
    query against a database ("gallery") of the training images."""
    if images.splits is None:
        raise UserInputError(
            "Invalid value for `data.protocol`: 'database_query' needs a source that says which image is in "
            f"which split (TFDS with data.tfds_split=train+test, a list file with splits); {images.name!r} has "
            "none. Use data.protocol=class_disjoint.")
    is_train = images.splits == "train"
    if is_train.all() or not is_train.any():
        raise UserInputError(
            f"Invalid value for `data.protocol`: 'database_query' needs images in the 'train' split and in "
            f"another one; {images.name!r} has splits {sorted(set(images.splits.tolist()))}.")
    database = dataclasses.replace(images, splits=np.where(is_train, "gallery", "query"))
    return Split(images, images.subset(np.flatnonzero(is_train)), database)


def load_split(cfg: Config) -> Split:
    """The configured images split into training and held-out classes (errors name config keys)."""
    with preflight.config_keys(**preflight.DATA_KEYS):
        images = load_data(cfg.data)
        if cfg.data.protocol == "database_query":
            return database_query_split(images)
        test_classes = cfg.data.test_classes
        if not test_classes and cfg.data.test_fraction > 0:
            test_classes = tuple(int(c) for c in splits.random_test_classes(images, cfg.data.test_fraction,
                                                                               cfg.data.split_seed))
        elif not test_classes and images.splits is not None:
            published = splits.list_test_classes(images)
            if published is not None:  # the list's own class-disjoint split (SOP, In-Shop)
                test_classes = tuple(int(c) for c in published)
            else:
                log.info("The list's split is per image, not by class: holding out the second half of the classes.")
        train_set, test_set = splits.class_disjoint_split(images, test_classes)
    return Split(images, train_set, test_set)


def get_strategy(name: str) -> tf.distribute.Strategy:
    """"default" (one device), "mirrored" (all local devices), "multi_worker" (several hosts, from
    TF_CONFIG: `training.distributed`) or "auto" (mirrored if > 1 GPU)."""
    if name == "multi_worker":
        return distributed.multi_worker_strategy()
    if name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_embedder(cfg: Config) -> keras.Model:
    """The (untrained) embedding model of the config, seeded by `train.seed`."""
    m = cfg.model
    with preflight.config_keys(**preflight.MODEL_KEYS):
        return build_embedding_model(m.backbone, m.image_size, m.embedding_dim, m.pooling, m.weights,
                                     seed=cfg.train.seed, layer_norm=m.layer_norm, head=m.head,
                                     code_bits=m.code_bits, **config_lib.backbone_args(m))


def fit(cfg: Config, run_dir: Path, split: Split, resume: bool = True, verbose: Union[int, str] = "auto",
        strategy: Optional[tf.distribute.Strategy] = None) -> FitResult:
    """Trains the config's model on `split.train` and checkpoints it under `run_dir/checkpoints`.

    Args:
        cfg: a validated, resolved config.
        run_dir: the run folder (prepared by `train`).
        split: the run's data (`load_split(cfg)`).
        resume: continue from the run folder's checkpoint if there is one.
        verbose: Keras `fit` verbosity (`progress_verbosity`): "auto" or 1 = a progress bar on a
            terminal, one line per epoch elsewhere; 2 = one line per epoch; 0 = silent.
        strategy: the tf.distribute strategy (default: `get_strategy(train.strategy)`); a
            multi-worker one is created by the caller, before any other TensorFlow work.

    Returns:
        A `FitResult` naming the final checkpoint.
    """
    s, m, t = cfg.sampler, cfg.model, cfg.train
    if t.steps_per_epoch == 0:  # one pass over the training images (epoch batches)
        t = dataclasses.replace(t, steps_per_epoch=len(split.train) // s.batch_size)
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = resume_checkpoint(ckpt_dir) if resume else None  # (path, completed epochs, steps into the next)
    best = BestCheckpoint.read(ckpt_dir) if (t.select_best and checkpoint is not None) else None
    if checkpoint is not None and checkpoint[2] == 0 and (checkpoint[1] >= t.epochs or
                                                          (best or {}).get("stopped_early")):
        return _result(cfg, ckpt_dir, 0.0, [])

    keras.utils.set_random_seed(t.seed)
    train_set = split.train
    kind = input_kind(cfg.loss.name)
    if kind == "proxy_similarities":  # proxies are indexed by class: labels 0..C-1
        train_set = dataclasses.replace(train_set, labels=np.unique(train_set.labels, return_inverse=True)[1]
                                        .astype(np.int32).reshape(-1))
    strategy = strategy or get_strategy(t.strategy)
    preflight.check(cfg, train_set.labels, strategy.num_replicas_in_sync)  # before any model is built
    log.info("Training on %s images of %s classes; evaluating on %s images of %s held-out classes: %s.",
             f"{len(train_set):,}", f"{len(np.unique(train_set.labels)):,}", f"{len(split.test):,}",
             f"{len(split.test_class_names):,}", summarize_names(split.test_class_names, full_list="metrics.json"))

    initial_epoch = into = 0
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(t.precision)  # mixed precision: set while the model is built and trained
    try:
        with strategy.scope():
            if checkpoint is not None:
                try:
                    model = keras.models.load_model(checkpoint[0])
                except (ValueError, TypeError, KeyError, OSError) as err:  # a valid archive Keras cannot load
                    raise UserInputError(
                        f"Cannot resume from {str(checkpoint[0])!r}: its archive is intact but Keras cannot load it "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Move it out of "
                        "that folder to resume from the one before, or train under a new name (--set "
                        "run.name=NEW).") from None
                initial_epoch, into = checkpoint[1], checkpoint[2]
                log.info("Resuming %s from epoch %d%s.", run_dir, initial_epoch,
                         f", step {into} of the next" if into else "")
            else:
                model = build_embedder(cfg)
                if m.freeze_batchnorm:
                    freeze_batchnorm(model)
                if kind == "proxy_similarities":
                    model = build_proxy_trainer(model, int(train_set.labels.max()) + 1, seed=t.seed)
                multipliers = {PROXY_LAYER: cfg.loss.proxy_lr_multiplier, HEAD_LAYER: t.head_lr_multiplier}
                optimizer = build_optimizer(t, t.epochs * t.steps_per_epoch,
                                            {k: v for k, v in multipliers.items() if v != 1.0})
                loss = get_loss(cfg.loss.name, **config_lib.loss_args(cfg.loss))
                if m.head == "hash" and kind != "proxy_similarities":  # codes at unit scale, push to +-1
                    # (a proxy loss sees cosines to the class proxies: the codes' scale is gone)
                    loss = HashingLoss(loss, m.code_bits, cfg.loss.quantization_weight)
                model.compile(optimizer=optimizer, loss=loss, jit_compile=t.jit_compile)
        return _fit_model(cfg, t, run_dir, split, train_set, model, initial_epoch, into, verbose, strategy)
    finally:
        keras.config.set_dtype_policy(policy)


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


def freeze_batchnorm(model: keras.Model) -> int:
    """Makes every BatchNormalization layer of `model` untrainable (inference mode); returns how many."""
    frozen = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            frozen += 1
    return frozen


def _fit_model(cfg: Config, t, run_dir: Path, split: Split, train_set: sources.ImageSet, model: keras.Model,
               initial_epoch: int, into: int, verbose: Union[int, str],
               strategy: tf.distribute.Strategy) -> FitResult:
    """`model.fit` with the run's callbacks and batches, from step `into` of epoch `initial_epoch`
    (a partial checkpoint: the rest of that epoch is fitted first, as a shorter epoch); under a
    multi-worker strategy, `distributed.fit_loop`, each task writing to its `worker_dir`."""
    s, m = cfg.sampler, cfg.model
    verbose = progress_verbosity(verbose)
    multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    out_dir = distributed.worker_dir(run_dir, strategy) if multi else run_dir
    ckpt_dir = out_dir / "checkpoints"
    # Replicas' BatchNorm statistics are averaged first at every epoch end, so that evaluation,
    # the checkpoint and the export all see the same model (see SyncReplicaStatistics).
    if s.kind == "pk":
        batch = s.classes_per_batch * s.examples_per_class
    else:  # random, epoch: batch_size images; triplets: batch_size // 3 whole triplets
        batch = s.batch_size // 3 * 3 if s.kind == "triplets" else s.batch_size
    sync = distributed.SyncAcrossWorkers(strategy) if multi else SyncReplicaStatistics()
    callbacks: list = [StopOnNonFiniteLoss(ckpt_dir), sync, TrainingRate(batch, t.steps_per_epoch)]
    evaluation = None
    if cfg.eval.every_epoch or t.select_best:
        evaluation = RetrievalEvaluation(pipeline.eval_dataset(split.test, m.image_size, cfg.eval.batch_size,
                                                               m.center_crop),
                                         split.test.labels, cfg.eval.recall_ks, cfg.eval.similarity,
                                         embedder=embedder_of(model), query_mask=query_mask(split.test.splits),
                                         eager=multi)
        callbacks += [evaluation, NeighbourPictures(evaluation, split.test, out_dir / "tensorboard", cfg.eval.similarity)]
        if verbose == 1:  # the evaluation's log line, on a line of its own below the bar
            callbacks.insert(0, EndProgressLine())
    if t.select_best:  # split.test holds the validation classes here (see `selection_split`)
        callbacks.append(BestCheckpoint(ckpt_dir, evaluation, t.select_metric, t.patience, initial_epoch,
                                        state_from=run_dir / "checkpoints"))
    callbacks += [EpochScalars(out_dir / "tensorboard"), ResumableCheckpoint(ckpt_dir)]
    spe = t.steps_per_epoch
    if t.checkpoint_every_steps:
        callbacks.append(StepCheckpoint(ckpt_dir, t.checkpoint_every_steps, spe, initial_epoch * spe + into))

    def batches_from(step: int):  # the batches an uninterrupted run sees from global step `step`
        return pipeline.train_dataset(train_set, s.classes_per_batch, s.examples_per_class, m.image_size,
                                      seed=s.seed, augment_images=cfg.data.augment, start_step=step, kind=s.kind,
                                      batch_size=s.batch_size, triplets_per_query=s.triplets_per_query,
                                      erase_prob=cfg.data.erase_prob, flip=cfg.data.flip,
                                      small_classes=s.small_classes or "replace", steps_per_epoch=spe,
                                      augmentation=cfg.data.augmentation)

    start = time.time()
    if multi:
        batches = distributed.worker_batches(strategy, lambda: batches_from(initial_epoch * spe + into), batch)
        distributed.fit_loop(model, strategy, batches, t.epochs, spe, initial_epoch, into, callbacks, verbose)
        return _result(cfg, run_dir / "checkpoints" if distributed.is_chief(strategy) else ckpt_dir,
                       time.time() - start, evaluation.history if evaluation else [])
    if into:  # the rest of the interrupted epoch
        model.fit(batches_from(initial_epoch * spe + into), epochs=initial_epoch + 1, steps_per_epoch=spe - into,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
        initial_epoch += 1
    if initial_epoch < t.epochs and not model.stop_training:
        model.fit(batches_from(initial_epoch * spe), epochs=t.epochs, steps_per_epoch=spe,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
    return _result(cfg, ckpt_dir, time.time() - start, evaluation.history if evaluation else [])


def _result(cfg: Config, ckpt_dir: Path, seconds: float, history: list) -> FitResult:
    """The checkpoint training leaves: the last epoch's, or with `train.select_best` the best one."""
    path, epochs = ResumableCheckpoint.latest(ckpt_dir)
    selection = BestCheckpoint.read(ckpt_dir) if cfg.train.select_best else None
    if selection is not None:
        path = ckpt_dir / "best.keras"
    return FitResult(path, epochs, seconds, history, selection)


def selection_split(split: Split, cfg: Config) -> Split:
    """With `train.select_best`: train on the training classes minus a seeded `train.val_fraction`
    of them, which are evaluated each epoch to pick the best one (the test classes stay unseen)."""
    val = splits.validation_classes(split.train.labels, cfg.train.val_fraction, cfg.train.seed,
                                    keys="train.val_fraction")
    train_set, val_set = splits.class_disjoint_split(split.train, val.tolist())
    return Split(split.images, train_set, val_set)
