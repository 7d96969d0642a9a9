"""Training across hosts: TensorFlow's MultiWorkerMirroredStrategy in a custom training loop.

    TF_CONFIG (cluster + this task) -> `multi_worker_strategy()`
      -> every worker builds the same model (seeded) under the strategy and resumes from the
         same checkpoint (the run folder must be on storage every worker sees)
      -> `worker_batches`: every worker draws the same global batch stream (same seed, indexed
         by step) and keeps only its replicas' slices, so each replica holds whole classes of
         a P x K batch and the union over workers is the single-worker batch
      -> `fit_loop`: `strategy.run` of one step (the loss of the compiled model, which Keras
         scales by 1 / replicas; the optimiser all-reduces the gradients as `model.fit` does),
         driving the run's Keras callbacks (evaluation, checkpoints, TensorBoard)
      -> the chief writes the run folder; the other workers write the same files to a
         temporary folder (`worker_dir`) they delete at the end (the Keras multi-worker
         convention: every worker saves, since saving may need them all)

Keras 3 `model.fit` fails under this strategy (keras-team/keras#20585: its data adapter
cannot take the distributed batches), hence the loop. BatchNorm statistics are averaged over
every replica of every worker at each epoch end (`sync_across_workers`), so that all workers
hold one model. With `loss.cross_replica=true` the batch losses mine across all workers'
replicas, and the training step is exactly the single-worker step on the global batch (with
BatchNorm frozen or absent: per-replica batch statistics differ from the global batch's).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tfsim.errors import UserInputError
from tfsim.losses.memory import MEMORY_LAYER

log = logging.getLogger(__name__)


def multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy from `TF_CONFIG`, with a clear error when it is missing."""
    raw = os.environ.get("TF_CONFIG")
    try:
        spec = json.loads(raw) if raw else None
    except ValueError:
        spec = None
    if not spec or "cluster" not in spec or "task" not in spec:
        raise UserInputError(
            "train.strategy=multi_worker needs the TF_CONFIG environment variable: a JSON object with "
            '"cluster" (e.g. {"worker": ["host1:12345", "host2:12345"]}) and "task" (this process\'s '
            '{"type": "worker", "index": 0}); see the README section "Training on several machines". '
            f"Found TF_CONFIG={raw!r}.")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The task that writes the run's outputs: "chief", or worker 0 when there is no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_dir(run_dir: Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this task writes: the run folder on the chief, a temporary sibling elsewhere."""
    if is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    return run_dir.parent / f".worker-{resolver.task_type}-{resolver.task_id}-{run_dir.name}"


def remove_worker_dir(run_dir: Path, strategy: tf.distribute.Strategy) -> None:
    """Deletes a non-chief task's temporary folder (nothing on the chief)."""
    if not is_chief(strategy):
        shutil.rmtree(worker_dir(run_dir, strategy), ignore_errors=True)


def worker_batches(strategy: tf.distribute.Strategy, make_dataset: Callable[[], tf.data.Dataset],
                   global_batch: int):
    """The distributed dataset of this worker's replicas: slices of the global batches.

    `make_dataset()` yields `(images, labels)` global batches of `global_batch` rows, the same
    on every worker. Replica r (of R, over all workers) gets rows `[r B/R, (r+1) B/R)`.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise UserInputError(f"The batch of {global_batch} images cannot be split over {replicas} replicas: choose "
                             "sampler.classes_per_batch (or sampler.batch_size) so that it is a multiple of "
                             f"{replicas}.")
    per_replica = global_batch // replicas

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local

        def slices(images, labels):
            images = tf.reshape(images, [replicas, per_replica, *images.shape[1:]])[first:first + local]
            labels = tf.reshape(labels, [replicas, per_replica])[first:first + local]
            return tf.data.Dataset.from_tensor_slices((images, labels))

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        options.autotune.enabled = False  # (see `pipeline.without_autotune`)
        return make_dataset().flat_map(slices).with_options(options)

    return strategy.distribute_datasets_from_function(dataset_fn)


def sync_across_workers(strategy: tf.distribute.Strategy, model: keras.Model) -> None:
    """Sets every non-trainable float variable (BatchNorm statistics) to its mean over all replicas
    of all workers. A cross-batch memory's variables are left as they are: every replica writes
    the same global batches into it (`tfsim.losses.memory`)."""
    variables = [getattr(v, "value", v) for v in model.non_trainable_variables
                 if "float" in str(v.dtype) and MEMORY_LAYER not in v.path.split("/")]
    if not variables:
        return
    local = [np.mean([np.asarray(c) for c in strategy.experimental_local_results(v)], axis=0) for v in variables]

    @tf.function
    def all_reduce():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.constant(x) for x in local])
        return strategy.run(replica_fn)

    means = strategy.experimental_local_results(all_reduce())[0]
    for variable, mean in zip(variables, means):
        for copy in strategy.experimental_local_results(variable):
            copy.assign(mean)


class SyncAcrossWorkers(keras.callbacks.Callback):
    """`sync_across_workers` at each epoch end (first, before evaluation and checkpoints)."""

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch, logs=None):
        sync_across_workers(self.strategy, self.model)


def fit_loop(model: keras.Model, strategy: tf.distribute.Strategy, batches, epochs: int, steps_per_epoch: int,
             initial_epoch: int, steps_into_epoch: int, callbacks: list, verbose: int = 0) -> None:
    """`model.fit` for a multi-worker strategy (see module doc): from step `steps_into_epoch` of epoch
    `initial_epoch` to `epochs`, on the distributed `batches` (which start at that step)."""
    if not model.optimizer.built:  # (a resumed model's optimizer holds its restored state)
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    optimizer = model.optimizer
    iterator = iter(batches)

    @tf.function
    def train_step(iterator):
        def replica_fn(images, labels):
            with tf.GradientTape() as tape:
                predictions = model(images, training=True)
                # The model's own loss (a cross-batch memory's trainer reads and writes its memory
                # there), as Keras's train_step computes it.
                loss = model.compute_loss(x=images, y=labels, y_pred=predictions, training=True)
                scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss
        per_replica = strategy.run(replica_fn, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    hooks = keras.callbacks.CallbackList(callbacks, model=model, add_history=False, add_progbar=verbose == 1,
                                         verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    model.stop_training = False
    hooks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        hooks.on_epoch_begin(epoch)
        steps = steps_per_epoch - (steps_into_epoch if epoch == initial_epoch else 0)
        total = 0.0
        for step in range(steps):
            hooks.on_train_batch_begin(step)
            loss = float(train_step(iterator))
            total += loss
            hooks.on_train_batch_end(step, {"loss": loss})
        logs = {"loss": total / max(steps, 1)}
        hooks.on_epoch_end(epoch, logs)
        if verbose == 2:
            log.info("Epoch %d/%d - loss: %.4f", epoch + 1, epochs, logs["loss"])
        if model.stop_training:
            break
    hooks.on_train_end()
