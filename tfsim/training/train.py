"""`train(cfg)`: the whole pipeline of one run, stage by stage.

Data flow (each stage a module of its own; this file only connects them):

    config.validate
      -> data.sources (ImageSet) -> data.splits.class_disjoint_split (train / held-out classes)
      -> baselines on the held-out classes: raw pixels, untrained network (+ whitening),
         raw pixels + whitening
      -> data.pipeline.train_dataset (P x K, random or triplet batches)
      -> model.fit under a tf.distribute strategy; the model fitted is the embedder, or for
         proxy losses `embedder -> CosineProxies` (labels remapped to 0..C-1), with Adam
         (`ScaledAdam`: the proxies' learning rate times `loss.proxy_lr_multiplier`)
         callbacks: SyncReplicaStatistics -> RetrievalEvaluation (val Recall@K) -> TensorBoard
         -> ResumableCheckpoint
      -> models.whitening: PCA whitening fitted on the training images' embeddings,
         appended to the embedder (config `whitening`; on by default)
      -> evaluation.retrieval_metrics on the held-out classes -> metrics.json
         (`unwhitened`: the same metrics before whitening)
      -> export.export_embedder (SavedModel, TF Serving layout) with the ScaNN index of the
         held-out gallery inside the same atomic export

Run folder `<run.root>/<run.name>/`: config.json, metrics.json, tensorboard/,
checkpoints/ (epoch-NNNN.keras: the trained model after NNNN epochs, before whitening), whitening.npz
(`mean`, `projection` of the exported whitening), samples/ (a few held-out query images).

Resume: if the run folder holds a checkpoint written with the same config, training
continues from the next epoch, and because P x K batches are indexed by step, it
sees the same batches an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfsim import config as config_lib
from tfsim.config import Config
from tfsim.data import pipeline, samplers, sources, splits
from tfsim.errors import UserInputError
from tfsim.evaluation.embed import embed
from tfsim.evaluation.metrics import retrieval_metrics
from tfsim.export import export_embedder
from tfsim.index import scann_index
from tfsim.losses import get_loss, input_kind
from tfsim.models import build_embedding_model
from tfsim.models.proxies import PROXY_LAYER, build_proxy_trainer, embedder_of
from tfsim.models.whitening import fit_whitening, normalize_rows, whiten, with_whitening
from tfsim.training.callbacks import ResumableCheckpoint, RetrievalEvaluation, SyncReplicaStatistics
from tfsim.training.optimizers import ScaledAdam

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


def load_data(cfg: config_lib.DataConfig, image_size: int) -> sources.ImageSet:
    """The ImageSet named by the data config."""
    if cfg.source == "default":
        return sources.load_default()
    if cfg.source == "folder":
        return sources.load_folder(cfg.path)
    return sources.load_tfds(cfg.tfds_name, cfg.tfds_split, cfg.data_dir, cfg.manual_dir,
                             image_size=max(image_size, 32))


def get_strategy(name: str) -> tf.distribute.Strategy:
    """"default" (one device), "mirrored" (all local devices) or "auto" (mirrored if > 1 GPU)."""
    if name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


_POST_TRAINING_SECTIONS = ("eval", "whitening", "export", "index")


def _prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / "config.json"
    resolved = config_lib.to_dict(cfg)
    if cfg_file.is_file() and ResumableCheckpoint.latest(run_dir / "checkpoints") is not None:
        previous = json.loads(cfg_file.read_text())
        current = json.loads(json.dumps(resolved))
        # Sections applied after training may change on resume (e.g. refit the whitening with
        # another power without retraining); everything that shapes the weights may not.
        if ({k: v for k, v in previous.items() if k not in _POST_TRAINING_SECTIONS}
                != {k: v for k, v in current.items() if k not in _POST_TRAINING_SECTIONS}):
            raise UserInputError(
                f"Run folder {str(run_dir)!r} holds a checkpoint of a run with a different config. "
                "Choose another name with --set run.name=NEW, or delete that folder to start over.")
        if not resume:
            raise UserInputError(
                f"Run folder {str(run_dir)!r} already holds a checkpoint. Resume it (drop --no-resume), "
                "choose another name with --set run.name=NEW, or delete the folder.")
    tmp = cfg_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(resolved, indent=2) + "\n")
    os.replace(tmp, cfg_file)


def _write_samples(test: sources.ImageSet, out: Path, per_class: int = 1) -> list[Path]:
    """A few held-out images as PNG files, to try the search command on."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for label in np.unique(test.labels):
        for row in np.flatnonzero(test.labels == label)[:per_class]:
            img = test.load_images([row])[0]
            name = test.class_names[label].replace("/", "-").replace(" ", "_").lower()
            image_id = Path(str(test.ids[row])).stem.rsplit(":", 1)[-1]
            path = out / f"{name}_{image_id}.png"
            path.write_bytes(tf.io.encode_png(np.asarray(img, np.uint8)).numpy())
            written.append(path)
    return written


# Raw-pixel vectors longer than this (e.g. 64x64x3 = 12,288) get no whitened baseline: their
# covariance would be too large to fit. The default's 28x28x3 = 2,352 is far below.
_MAX_WHITENED_PIXELS = 4096


def _embed_held_out(embedder: keras.Model, fit_set: sources.ImageSet, test_set: sources.ImageSet,
                    cfg: Config) -> tuple[np.ndarray, np.ndarray, Optional[tuple[np.ndarray, np.ndarray]]]:
    """Held-out embeddings after and before the configured whitening (fitted on `fit_set`), and
    the whitening `(mean, projection)` (None when off). One pass of the network over each set."""
    m, w, bs = cfg.model, cfg.whitening, cfg.eval.batch_size
    test = embed(embedder, test_set, m.image_size, bs)
    if not w.enabled:
        return test, test, None
    whitening = _fit_or_explain(embed(embedder, fit_set, m.image_size, bs), w)
    return whiten(test, *whitening), test, whitening


def _fit_or_explain(features: np.ndarray, w: config_lib.WhiteningConfig) -> tuple[np.ndarray, np.ndarray]:
    """`fit_whitening` with the run's settings; a degenerate fit becomes a user-facing message."""
    if len(features) < 4 * features.shape[1]:
        log.warning("Whitening is fitted on %d images for %d dimensions; with fewer than ~4 per dimension "
                    "the small-variance axes are noise and whitening can hurt (try whitening.power=0 or "
                    "whitening.dims smaller, or whitening.enabled=false).", len(features), features.shape[1])
    try:
        return fit_whitening(features, w.power, w.dims)
    except ValueError as e:
        raise UserInputError(
            f"Cannot fit the whitening on the training images' embeddings: {e} Check that training did not "
            "collapse (lower train.learning_rate), or set whitening.enabled=false.") from e


def train(cfg: Config, run_dir: Optional[os.PathLike] = None, resume: bool = True, verbose: int = 2) -> TrainResult:
    """Trains, evaluates on held-out classes, exports and indexes (see module doc).

    Args:
        cfg: the run's config (validated and resolved here).
        run_dir: overrides `<run.root>/<run.name>`.
        resume: continue from the run folder's checkpoint if there is one.
        verbose: Keras `fit` verbosity (1 = progress bar, 2 = one line per epoch).

    Returns:
        A `TrainResult`.

    Raises:
        UserInputError: bad config or data, or a run folder that belongs to another config.
    """
    start = time.time()
    config_lib.validate(cfg)
    cfg = config_lib.resolve(cfg)
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run.root) / cfg.run.name
    _prepare_run_dir(cfg, run_dir, resume)
    keras.utils.set_random_seed(cfg.train.seed)

    images = load_data(cfg.data, cfg.model.image_size)
    train_set, test_set = splits.class_disjoint_split(images, cfg.data.test_classes)
    s, m, t = cfg.sampler, cfg.model, cfg.train
    kind = input_kind(cfg.loss.name)
    if kind == "proxy_similarities":  # proxies are indexed by class: labels 0..C-1
        train_set = dataclasses.replace(train_set, labels=np.unique(train_set.labels, return_inverse=True)[1]
                                        .astype(np.int32).reshape(-1))
    if s.kind == "pk":
        samplers.check_pk(train_set.labels, s.classes_per_batch, s.examples_per_class)
    elif s.kind == "triplets":
        samplers.check_triplets(train_set.labels)
    test_names = [images.class_names[c] for c in np.unique(test_set.labels)]
    log.info("Training on %d images of %d classes; evaluating on %d images of held-out classes %s.",
             len(train_set), len(np.unique(train_set.labels)), len(test_set), test_names)

    strategy = get_strategy(t.strategy)
    replicas = strategy.num_replicas_in_sync
    unit = {"pk": ("sampler.classes_per_batch", s.classes_per_batch, "whole classes"),
            "random": ("sampler.batch_size", s.batch_size, "equal shares"),
            "triplets": ("sampler.batch_size", s.batch_size // 3, "whole triplets (batch_size // 3 of them)")}[s.kind]
    if unit[1] % replicas:
        raise UserInputError(
            f"Invalid value for `{unit[0]}`: expected a multiple of the {replicas} replicas so each replica "
            f"holds {unit[2]}. Received: {unit[1]}")
    with strategy.scope():
        embedder = build_embedding_model(m.backbone, m.image_size, m.embedding_dim, m.pooling, m.weights,
                                         m.width, seed=t.seed, blocks_per_stage=m.blocks_per_stage,
                                         layer_norm=m.layer_norm, zero_init_residual=m.zero_init_residual)
        model = embedder
        if kind == "proxy_similarities":
            model = build_proxy_trainer(embedder, int(train_set.labels.max()) + 1, seed=t.seed)
        loss = get_loss(cfg.loss.name, **config_lib.loss_args(cfg.loss))
        lr = t.learning_rate
        if t.lr_schedule == "cosine":
            lr = keras.optimizers.schedules.CosineDecay(t.learning_rate, t.epochs * t.steps_per_epoch)
        optimizer = ScaledAdam(lr, lr_multipliers={PROXY_LAYER: cfg.loss.proxy_lr_multiplier})
        model.compile(optimizer=optimizer, loss=loss)

    ks, sim, w = cfg.eval.recall_ks, cfg.eval.similarity, cfg.whitening
    fit_set = train_set
    if len(train_set) > w.max_images:  # a seeded subset fits the whitening
        rows = np.sort(np.random.default_rng(t.seed).choice(len(train_set), w.max_images, replace=False))
        fit_set = train_set.subset(rows)
    # Baselines go through the same post-processing as the trained model: the untrained
    # network is the whole pipeline minus training (whitened if whitening is on).
    raw_test = pipeline.raw_pixels(test_set, m.image_size)
    baselines = {
        "raw_pixels": retrieval_metrics(raw_test, test_set.labels, ks, "cosine"),
        "untrained": retrieval_metrics(_embed_held_out(embedder, fit_set, test_set, cfg)[0], test_set.labels, ks, sim),
    }
    if w.enabled and w.dims <= raw_test.shape[1] <= _MAX_WHITENED_PIXELS:
        raw_fit = normalize_rows(pipeline.raw_pixels(fit_set, m.image_size))
        baselines["raw_pixels_whitened"] = retrieval_metrics(
            whiten(normalize_rows(raw_test), *fit_whitening(raw_fit, w.power, w.dims)), test_set.labels, ks, "cosine")
    del raw_test

    initial_epoch, fit_seconds = 0, 0.0
    checkpoint = ResumableCheckpoint.latest(run_dir / "checkpoints") if resume else None
    if checkpoint is not None:
        with strategy.scope():
            model = keras.models.load_model(checkpoint[0])
        embedder = embedder_of(model)
        initial_epoch = checkpoint[1]
        log.info("Resuming %s from epoch %d.", run_dir, initial_epoch)

    # Replicas' BatchNorm statistics are averaged first at every epoch end, so that evaluation,
    # the checkpoint and the export all see the same model (see SyncReplicaStatistics).
    callbacks = [SyncReplicaStatistics()]
    evaluation = None
    if cfg.eval.every_epoch:
        evaluation = RetrievalEvaluation(pipeline.eval_dataset(test_set, m.image_size, cfg.eval.batch_size),
                                         test_set.labels, ks, sim, embedder=embedder)
        callbacks.append(evaluation)
    callbacks += [keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False),
                  ResumableCheckpoint(run_dir / "checkpoints")]
    if initial_epoch < t.epochs:
        data = pipeline.train_dataset(train_set, s.classes_per_batch, s.examples_per_class, m.image_size,
                                      seed=s.seed, augment_images=cfg.data.augment,
                                      start_step=initial_epoch * t.steps_per_epoch, kind=s.kind,
                                      batch_size=s.batch_size, triplets_per_query=s.triplets_per_query,
                                      erase_prob=cfg.data.erase_prob, flip=cfg.data.flip)
        fit_start = time.time()
        model.fit(data, epochs=t.epochs, steps_per_epoch=t.steps_per_epoch, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=verbose, shuffle=False)
        fit_seconds = time.time() - fit_start

    # The exported model is `embedder -> Whitening`; its held-out embeddings are computed here as
    # whiten(embedder output), the same function in NumPy (tests check the export matches).
    test_embeddings, unwhitened, whitening = _embed_held_out(embedder, fit_set, test_set, cfg)
    final = embedder
    if whitening is not None:
        np.savez(run_dir / "whitening.npz", mean=whitening[0], projection=whitening[1])
        with strategy.scope():
            final = with_whitening(embedder, *whitening)
    metrics = retrieval_metrics(test_embeddings, test_set.labels, ks, sim)
    if whitening is not None:
        metrics["unwhitened"] = retrieval_metrics(unwhitened, test_set.labels, ks, sim)
    metrics["baselines"] = baselines
    metrics["test_classes"] = test_names
    metrics["num_train_images"] = len(train_set)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_samples(test_set, run_dir / "samples")

    export_dir = index_dir = None
    if cfg.export.enabled:
        def write_index(meta_dir: Path):
            if not cfg.index.enabled:
                return
            ic = cfg.index
            searcher, params = scann_index.build(
                test_embeddings, sim, ic.num_neighbors, ic.num_leaves, ic.num_leaves_to_search, ic.reorder,
                ic.dims_per_block, ic.anisotropic_threshold)
            scann_index.save(meta_dir / "index", searcher, params, test_set.ids, test_set.labels,
                             images.class_names, sim, images=test_set.images, paths=test_set.paths, atomic=False)

        export_dir = export_embedder(
            final, cfg.export.root, cfg.export.name or cfg.run.name, m.image_size,
            metadata={"run_dir": str(run_dir), "similarity": sim, "config": config_lib.to_dict(cfg),
                      "metrics": {k: v for k, v in metrics.items() if k not in ("baselines", "unwhitened")}},
            write_extras=write_index)
        if cfg.index.enabled:
            index_dir = export_dir / "assets.extra" / "tfsim" / "index"
    return TrainResult(run_dir=run_dir, metrics=metrics, export_dir=export_dir, index_dir=index_dir,
                       test_classes=test_names, seconds=time.time() - start, fit_seconds=fit_seconds,
                       history=evaluation.history if evaluation else [])
