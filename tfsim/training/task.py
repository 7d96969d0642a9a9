"""`Task(cfg)`: the one place where a config becomes objects.

    Task(cfg)
      .build_inputs()               -> Split: the images, the training and the held-out classes (`data.*`)
      .fit_split(split)             -> the split training sees (`train.select_best`: validation classes
                                       carved from the training classes are the held-out set)
      .training_set(train) / .decoded_once(train) / .training_batches(train, step)
                                    -> labels as the loss takes them; the batches an uninterrupted run
                                       sees from global step `step` (`sampler.*`, `data.augment*`)
      .build_embedder() / .build_model(num_classes)
                                    -> the embedder (`model.*`), or `embedder -> CosineProxies` for a
                                       proxy loss
      .build_loss()                 -> the registered loss with the config's arguments (`loss.*`),
                                       wrapped in `HashingLoss` for hash codes
      .build_optimizer(total_steps) -> the optimiser and schedule with per-layer multipliers (`train.*`)
      .build_metrics(test, model)   -> the held-out Recall@K / MAP@R evaluated each epoch (`eval.*`)
      .build_callbacks(...)         -> the training callbacks, in the order they must run

Train, tune, evaluate and the baselines build through it, so a config means the same objects
everywhere; `fit` (`tfsim.training.loop`) is the loop that runs them. The pattern is
tensorflow/models' `official/core/base_task.Task` (`build_inputs`, `build_model`, `build_losses`,
`build_metrics`), without its training step: Keras's `model.fit` (or `distributed.fit_loop`)
runs the step. `load_split(cfg)` and `build_embedder(cfg)` are also module functions, for callers
that need only the data or only the untrained network.

Example:
    >>> task = Task(config.load("default"))
    >>> split = task.build_inputs()
    >>> model = task.build_model(num_classes=len(np.unique(split.train.labels)))
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfsim import config as config_lib
from tfsim.config import Config
from tfsim.data import pipeline, sources, specs, splits
from tfsim.errors import UserInputError, config_keys
from tfsim.evaluation.embed import embed
from tfsim.evaluation.metrics import query_mask
from tfsim.losses import get_loss, input_kind
from tfsim.losses.quantization import HashingLoss
from tfsim.losses.memory import MemoryTrainer
from tfsim.models import build_embedding_model
from tfsim.models.embedding import HEAD_LAYER
from tfsim.models.proxies import PROXY_LAYER, build_proxy_trainer, embedder_of
from tfsim.training import distributed, optimizers, preflight
from tfsim.training.callbacks import (BestCheckpoint, ResumableCheckpoint, RetrievalEvaluation, StepCheckpoint,
                                      StopOnNonFiniteLoss, SyncReplicaStatistics)
from tfsim.training.tensorboard import EpochScalars, NeighbourPictures, TrainingRate

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
    """The run's images: the whole dataset, its training classes and its held-out classes.

    `dataset`: every image the source holds, with the class names and the source's report;
    `train` and `test`: subsets of it (with `data.protocol=database_query`, `test` is every image
    with its `splits` saying "query" or "gallery").
    """

    dataset: sources.ImageSet
    train: sources.ImageSet
    test: sources.ImageSet

    @property
    def test_class_names(self) -> list[str]:
        return [self.dataset.class_names[c] for c in np.unique(self.test.labels)]


def load_images(data: config_lib.DataConfig) -> sources.ImageSet:
    """The ImageSet named by the data config (errors name the library's arguments: see `load_split`)."""
    return specs.load_images(data.source, data.path, data.image_root, data.tfds_name, data.tfds_split,
                             data.data_dir, data.manual_dir, data.on_bad_file, data.max_pixels)


def database_query_split(dataset: sources.ImageSet) -> Split:
    """`data.protocol=database_query`: train on the "train" split; evaluate every other image as a
    query against a database ("gallery") of the training images."""
    if dataset.splits is None:
        raise UserInputError(
            "Invalid value for `data.protocol`: 'database_query' needs a source that says which image is in "
            f"which split (TFDS with data.tfds_split=train+test, a list file with splits); {dataset.name!r} has "
            "none. Use data.protocol=class_disjoint.")
    is_train = dataset.splits == "train"
    if is_train.all() or not is_train.any():
        raise UserInputError(
            f"Invalid value for `data.protocol`: 'database_query' needs images in the 'train' split and in "
            f"another one; {dataset.name!r} has splits {sorted(set(dataset.splits.tolist()))}.")
    database = dataclasses.replace(dataset, splits=np.where(is_train, "gallery", "query"))
    return Split(dataset, dataset.subset(np.flatnonzero(is_train)), database)


def load_split(cfg: Config) -> Split:
    """The configured images split into training and held-out classes (errors name config keys)."""
    with preflight.config_keys(**preflight.DATA_KEYS):
        dataset = load_images(cfg.data)
        if cfg.data.protocol == "database_query":
            return database_query_split(dataset)
        test_classes = cfg.data.test_classes
        if not test_classes and cfg.data.test_fraction > 0:
            test_classes = tuple(int(c) for c in splits.random_test_classes(dataset, cfg.data.test_fraction,
                                                                               cfg.data.split_seed))
        elif not test_classes and dataset.splits is not None:
            published = splits.list_test_classes(dataset)
            if published is not None:  # the list's own class-disjoint split (SOP, In-Shop)
                test_classes = tuple(int(c) for c in published)
            else:
                log.info("The list's split is per image, not by class: holding out the second half of the classes.")
        train_set, test_set = splits.class_disjoint_split(dataset, test_classes)
    return Split(dataset, train_set, test_set)


def validation_split(split: Split, fraction: float, seed: int, classes=(), keys: str = "train.val_fraction") -> Split:
    """`split` with its test classes set aside: the training classes minus validation classes
    (`classes`, else a `seed`-ed `fraction` of them) to train on, the validation classes held out.
    What `train.select_best` picks its epoch on (`selection_split`) and what a tune trial is scored
    on (`tfsim.tuning.trial`). `keys` names the config keys in errors."""
    val = splits.validation_classes(split.train.labels, fraction, seed, classes, keys=keys)
    with config_keys(test_classes=keys.split(" / ")[-1]):
        train_set, val_set = splits.class_disjoint_split(split.train, val.tolist())
    return Split(split.dataset, train_set, val_set)


def selection_split(split: Split, cfg: Config) -> Split:
    """With `train.select_best`: train on the training classes minus a seeded `train.val_fraction`
    of them, which are evaluated each epoch to pick the best one (the test classes stay unseen)."""
    return validation_split(split, cfg.train.val_fraction, cfg.train.seed)


def build_embedder(cfg: Config) -> keras.Model:
    """The (untrained) embedding model of the config, seeded by `train.seed`."""
    m = cfg.model
    with preflight.config_keys(**preflight.MODEL_KEYS):
        return build_embedding_model(m.backbone, m.image_size, m.embedding_dim, m.pooling, m.weights,
                                     seed=cfg.train.seed, layer_norm=m.layer_norm, head=m.head,
                                     code_bits=m.code_bits, **config_lib.backbone_args(m))


def freeze_batchnorm(model: keras.Model) -> int:
    """Makes every BatchNormalization layer of `model` untrainable (inference mode); returns how many."""
    frozen, seen, pending = 0, set(), list(model.layers)
    while pending:  # every layer of the model and of the models nested in it, once each
        layer = pending.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        pending.extend(getattr(layer, "layers", ()))
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            frozen += 1
    return frozen


class Task:
    """Builds a run's objects from one validated, resolved config (see module doc).

    Args:
        cfg: the run's config; its P x K sizes chosen (`preflight.choose_pk`) when left to tfsim.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @property
    def uses_proxies(self) -> bool:
        """Whether the loss scores class proxies (labels 0..C-1; the model ends in `CosineProxies`)."""
        return input_kind(self.cfg.loss.name) == "proxy_similarities"

    # Inputs.

    def build_inputs(self) -> Split:
        """The images split into training and held-out classes (`load_split`)."""
        return load_split(self.cfg)

    def fit_split(self, split: Split) -> Split:
        """The split training sees: `split`, or with `train.select_best` its training classes split again
        into those trained on and the validation classes that pick the epoch (`selection_split`)."""
        return selection_split(split, self.cfg) if self.cfg.train.select_best else split

    def training_set(self, train: sources.ImageSet) -> sources.ImageSet:
        """`train` with labels as the loss takes them: 0..C-1 for proxies (indexed by class), else as they are."""
        if not self.uses_proxies:
            return train
        return dataclasses.replace(train, labels=np.unique(train.labels, return_inverse=True)[1]
                                   .astype(np.int32).reshape(-1))

    def decoded_once(self, train: sources.ImageSet) -> tuple[sources.ImageSet, str]:
        """`train` decoded and resized once into memory when it fits `data.cache_mb`
        (`pipeline.decode_once`), and a sentence for the log saying which path training takes.
        With `augmentation=random_resized_crop` a file-backed set stays on its files (each crop
        is taken from the image at its own size)."""
        d = self.cfg.data
        if train.images is None and d.augment and d.augmentation == "random_resized_crop":
            return train, (f"{len(train):,} images decoded from their files at every step (random_resized_crop crops "
                           "each image at its own size)")
        return pipeline.decode_once(train, self.cfg.model.image_size, d.cache_mb * 2**20)

    def steps_per_epoch(self, num_train_images: int) -> int:
        """`train.steps_per_epoch`, or with 0 the steps of one pass over the training images."""
        steps = self.cfg.train.steps_per_epoch
        return steps if steps else num_train_images // self.cfg.sampler.batch_size

    @property
    def global_batch_size(self) -> int:
        """Images per training batch, over all replicas: P x K, `batch_size`, or whole triplets of it."""
        s = self.cfg.sampler
        if s.kind == "pk":
            return s.classes_per_batch * s.examples_per_class
        return s.batch_size // 3 * 3 if s.kind == "triplets" else s.batch_size

    def training_batches(self, train: sources.ImageSet, start_step: int, steps_per_epoch: int) -> tf.data.Dataset:
        """The batches an uninterrupted run sees from global step `start_step` (batches are indexed by
        step, so a resumed run sees the same ones). `train`: from `training_set`."""
        s, d = self.cfg.sampler, self.cfg.data
        return pipeline.train_dataset(train, s.classes_per_batch, s.examples_per_class, self.cfg.model.image_size,
                                      seed=s.seed, augment_images=d.augment, start_step=start_step, kind=s.kind,
                                      batch_size=s.batch_size, triplets_per_query=s.triplets_per_query,
                                      erase_prob=d.erase_prob, flip=d.flip,
                                      small_classes=s.small_classes or "replace", steps_per_epoch=steps_per_epoch,
                                      augmentation=d.augmentation)

    # Model, loss, optimiser.

    def build_embedder(self) -> keras.Model:
        """The untrained embedding model (`build_embedder`)."""
        return build_embedder(self.cfg)

    def build_model(self, num_classes: Optional[int] = None) -> keras.Model:
        """The model training fits: the embedder (BatchNorm frozen with `model.freeze_batchnorm`), followed
        by `num_classes` class proxies for a proxy loss, or inside a `MemoryTrainer` with
        `loss.memory_size`. Build it under the strategy's scope."""
        model = build_embedder(self.cfg)
        if self.cfg.model.freeze_batchnorm:
            freeze_batchnorm(model)
        if self.cfg.loss.memory_size:
            return MemoryTrainer(model, self.cfg.loss.memory_size, self.cfg.loss.memory_warmup_steps)
        if not self.uses_proxies:
            return model
        if num_classes is None:
            raise ValueError(f"Invalid value for `num_classes`: expected the number of training classes for the "
                             f"proxies of loss {self.cfg.loss.name!r}. Received: num_classes=None")
        return build_proxy_trainer(model, num_classes, seed=self.cfg.train.seed)

    def build_loss(self) -> keras.losses.Loss:
        """The config's loss with its arguments (`config.loss_args`). With `model.head=hash` a batch loss
        sees the codes at unit scale and pushes them to +-1 (`HashingLoss`); a proxy loss sees cosines to
        its proxies, where the codes' scale is gone, so it is left as it is."""
        lc, m = self.cfg.loss, self.cfg.model
        loss = get_loss(lc.name, **config_lib.loss_args(lc))
        if m.head == "hash" and not self.uses_proxies:
            loss = HashingLoss(loss, m.code_bits, lc.quantization_weight)
        return loss

    def build_optimizer(self, total_steps: int) -> keras.optimizers.Optimizer:
        """The optimiser over `total_steps` steps, with the proxies' and the head's learning-rate multipliers."""
        multipliers = {PROXY_LAYER: self.cfg.loss.proxy_lr_multiplier, HEAD_LAYER: self.cfg.train.head_lr_multiplier}
        return optimizers.build_optimizer(self.cfg.train, total_steps,
                                          {k: v for k, v in multipliers.items() if v != 1.0})

    # Embedding, metrics and callbacks.

    def embed(self, model: keras.Model, images: sources.ImageSet, verbose: int = 0,
              batch_size: Optional[int] = None) -> np.ndarray:
        """`[N, D]` embeddings of `images` by `model` as the config evaluates: its image size, centre
        crop and `eval.batch_size` (unless `batch_size` is given)."""
        m = self.cfg.model
        return embed(model, images, m.image_size, batch_size or self.cfg.eval.batch_size, verbose, m.center_crop)

    def build_metrics(self, test: sources.ImageSet, model: keras.Model,
                      eager: bool = False) -> Optional[RetrievalEvaluation]:
        """The held-out retrieval metrics of `model`'s embedder, evaluated at each epoch end (None unless
        `eval.every_epoch` or `train.select_best`). `eager`: evaluate outside tf.function (multi-worker)."""
        e, m = self.cfg.eval, self.cfg.model
        if not (e.every_epoch or self.cfg.train.select_best):
            return None
        return RetrievalEvaluation(pipeline.eval_dataset(test, m.image_size, e.batch_size, m.center_crop),
                                   test.labels, e.recall_ks, e.similarity, embedder=embedder_of(model),
                                   query_mask=query_mask(test.splits), eager=eager)

    def build_callbacks(self, evaluation: Optional[RetrievalEvaluation], test: sources.ImageSet, run_dir: Path,
                        out_dir: Path, steps_per_epoch: int, initial_step: int,
                        strategy: tf.distribute.Strategy) -> list:
        """The training callbacks in the order they must run: stop on a non-finite loss, average the
        replicas' BatchNorm statistics (so evaluation, the checkpoint and the export see one model),
        learning rate and images/s, the held-out evaluation and its neighbour pictures, the best
        checkpoint (`train.select_best`), the epoch scalars, the checkpoints.

        Args:
            evaluation: from `build_metrics` (None: no per-epoch evaluation).
            test: the images `evaluation` embeds (their pictures for TensorBoard).
            run_dir: the run folder (`train.select_best`'s state is read from its checkpoints).
            out_dir: where this process writes: `run_dir`, or a multi-worker task's `worker_dir`.
            steps_per_epoch, initial_step: the epoch's length and the global step training starts at.
            strategy: the tf.distribute strategy training runs under.
        """
        t = self.cfg.train
        ckpt_dir = out_dir / "checkpoints"
        multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        sync = distributed.SyncAcrossWorkers(strategy) if multi else SyncReplicaStatistics()
        callbacks: list = [StopOnNonFiniteLoss(ckpt_dir), sync, TrainingRate(self.global_batch_size, steps_per_epoch)]
        if evaluation is not None:
            callbacks += [evaluation,
                          NeighbourPictures(evaluation, test, out_dir / "tensorboard", self.cfg.eval.similarity)]
        if t.select_best:
            callbacks.append(BestCheckpoint(ckpt_dir, evaluation, t.select_metric, t.patience,
                                            initial_step // steps_per_epoch, state_from=run_dir / "checkpoints"))
        callbacks += [EpochScalars(out_dir / "tensorboard"), ResumableCheckpoint(ckpt_dir)]
        if t.checkpoint_every_steps:
            callbacks.append(StepCheckpoint(ckpt_dir, t.checkpoint_every_steps, steps_per_epoch, initial_step))
        return callbacks
