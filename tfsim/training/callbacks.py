"""Training callbacks: replica statistics sync, a stop on a non-finite loss, held-out retrieval
evaluation per epoch (the public `tfsim.callbacks.RetrievalEvaluation` with the run folders' log
names), resumable checkpoints."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfsim import callbacks, runs
from tfsim.errors import UserInputError
from tfsim.files import write_json

log = logging.getLogger(__name__)


def sync_replica_statistics(model: keras.Model) -> int:
    """Sets every non-trainable variable's per-replica copies to their mean; returns how many differed.

    Under tf.distribute, Keras 3 updates BatchNorm's moving mean and variance in each replica
    from that replica's slice of the batch only, and never reconciles the copies: replica 0's
    are the ones saved and exported, while `predict` under the strategy uses each replica's
    own. Averaging them makes the evaluated, checkpointed and exported model one function
    (a no-op on one device).
    """
    changed = 0
    for variable in model.non_trainable_variables:
        value = getattr(variable, "value", variable)
        copies = getattr(value, "values", None)
        if not isinstance(value, tf.distribute.DistributedValues) or copies is None or len(copies) < 2:
            continue
        tensors = [tf.convert_to_tensor(c) for c in copies]
        if all(bool(tf.reduce_all(t == tensors[0])) for t in tensors[1:]):
            continue
        mean = tf.add_n(tensors) / len(tensors)
        for copy in copies:
            copy.assign(tf.identity(mean))
        changed += 1
    return changed


class SyncReplicaStatistics(keras.callbacks.Callback):
    """`sync_replica_statistics` at each epoch end; place it first, before evaluation and checkpoints."""

    def on_epoch_end(self, epoch, logs=None):
        sync_replica_statistics(self.model)


class TrainingDiverged(UserInputError):
    """The loss became NaN or infinite: the config trains a diverging model."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with `TrainingDiverged` at the step whose loss is NaN or inf.

    Raising in `on_train_batch_end` ends `fit` inside the epoch, so the diverged weights are
    neither evaluated nor checkpointed and the run folder keeps the last good checkpoint
    (Keras' `TerminateOnNaN` lets the epoch end, when a checkpoint callback saves the NaN
    weights). Reading the loss at every step costs one scalar copy per step.
    """

    def __init__(self, checkpoints: os.PathLike | None = None):
        super().__init__()
        self.checkpoints = checkpoints
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(loss)):
            return
        last = runs.latest_checkpoint(self.checkpoints) if self.checkpoints is not None else None
        kept = (f"The last good checkpoint ({last[0].name}, epoch {last[1]}) is kept."
                if last is not None else "No epoch had finished, so there is no checkpoint.")
        raise TrainingDiverged(
            f"Training diverged: the loss was {float(loss)} at step {batch + 1} of epoch {self.epoch + 1}. "
            f"{kept} Lower train.learning_rate (or check the loss arguments) and train again under a new name "
            "(--set run.name=NEW).")


class RetrievalEvaluation(callbacks.RetrievalEvaluation):
    """The held-out evaluation of a run: `tfsim.callbacks.RetrievalEvaluation` (one implementation)
    writing `val_recall_at_K` / `val_map_at_r` to the logs, the names the run folders' TensorBoard
    scalars (`held_out/recall_at_K`, `held_out/map_at_r`) have always had, so runs from before and
    after the public callback compare in one TensorBoard.

    Place it *before* the TensorBoard callback (`tensorboard.EpochScalars`): Keras hands the same
    `logs` dict to the callbacks in order, so that one then records these values. The embedding
    is `tfsim.evaluation.embed.embed_dataset`'s, whose function is kept with its model: one trace per model,
    whatever the last batch's size (Keras' `predict` traces again for a smaller last batch, and
    TensorFlow warns of retracing once a tune process has embedded with a few models).

    Args:
        dataset: `tf.data.Dataset` of image batches over the whole evaluation set, in order.
        labels: int `[N]` labels of that set.
        ks: the K of Recall@K.
        similarity: retrieval score name.
        embedder: the model that embeds (default: the model being fitted; pass the
            embedder when fitting a wrapper such as a proxy trainer).
        query_mask: bool `[N]`: these rows query the others (In-Shop); None = leave-one-out.
        eager: embed batch by batch outside `predict` (under a multi-worker strategy).
    """

    def __init__(self, dataset, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                 similarity: str = "cosine", embedder=None, query_mask=None, eager: bool = False):
        super().__init__(dataset, labels, ks, similarity, embedder=embedder, query_mask=query_mask, eager=eager,
                         key_style="_at_")


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights + optimizer state) at each epoch end, atomically.

    Writes `<dir>/epoch-NNNN.keras` (NNNN = completed epochs) under a temporary name, then
    renames it: the model and its epoch number are committed by that one rename, so an
    interruption at any moment leaves a complete checkpoint whose name says how far it got.
    Older checkpoints are deleted only after the new one is in place; the newest `keep` (2)
    stay, so that a run whose last checkpoint was damaged on disk resumes from the one before
    (`tfsim.runs.choose_checkpoint`). A full disk stops training with one line naming the
    folder and the space needed; the previous checkpoints are kept and the temporary file
    removed. `tfsim.runs.latest_checkpoint(dir)` reads the newest back.
    """

    def __init__(self, directory: os.PathLike, keep: int = 2):
        super().__init__()
        self.directory = Path(directory)
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"epoch-{epoch + 1:04d}.keras"
        runs.save_model(self.model, path, f"the checkpoint of epoch {epoch + 1}", _kept(self.directory))
        for old, _ in runs.epoch_checkpoints(self.directory)[:-self.keep]:
            old.unlink(missing_ok=True)
        for partial, epochs, _ in runs.partial_checkpoints(self.directory):
            if epochs <= epoch:  # within the epoch just committed
                partial.unlink(missing_ok=True)


def _kept(directory: Path) -> str:
    """The end of a disk-full line at a checkpoint: what is kept, and that the same command resumes."""
    point = runs.resume_point(directory)
    if point is None:
        return " and run the same command again."
    return (f" (the previous checkpoint {point[0].name} is kept) and run the same command again: it resumes from "
            f"epoch {point[1]}" + (f", step {point[2]} of the next." if point[2] else "."))


class StepCheckpoint(keras.callbacks.Callback):
    """Saves the whole model every `every` steps within an epoch (`train.checkpoint_every_steps`),
    so that a killed run loses at most that many steps.

    Writes `<dir>/partial-EEEE-SSSSSS.keras` (E completed epochs, then S steps of the next)
    atomically, deleting the previous partial one; the epoch checkpoint deletes the partial ones
    of its epoch. `tfsim.runs.resume_point(dir)` returns the furthest checkpoint of either kind.
    """

    def __init__(self, directory: os.PathLike, every: int, steps_per_epoch: int, initial_step: int = 0):
        super().__init__()
        self.directory, self.every, self.steps_per_epoch = Path(directory), int(every), int(steps_per_epoch)
        self.step = int(initial_step)  # global steps done

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        epochs, steps_into_epoch = divmod(self.step, self.steps_per_epoch)
        if steps_into_epoch == 0 or steps_into_epoch % self.every:
            return  # the epoch checkpoint covers epoch ends
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"partial-{epochs:04d}-{steps_into_epoch:06d}.keras"
        runs.save_model(self.model, path, f"the checkpoint of step {steps_into_epoch} of epoch {epochs + 1}",
                        _kept(self.directory))
        for old, e, i in runs.partial_checkpoints(self.directory):
            if (e, i) != (epochs, steps_into_epoch):
                old.unlink(missing_ok=True)


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the model of the epoch with the best validation metric; stops after `patience`
    epochs without improvement (`train.select_best`, `train.patience`).

    Reads the metric from a `RetrievalEvaluation` placed before it (on validation classes carved
    from the training classes, never the test classes). Writes `<dir>/best.keras` atomically,
    then `<dir>/best.json` (read back by `tfsim.runs.read_best`): the metric, the best epoch and
    value, every epoch's value, and `stopped_early` (the epoch training stopped at, or null). An
    improvement must be strictly greater, so ties keep the earlier epoch. On resume from
    `initial_epoch`, the state is rebuilt from the recorded epochs up to it (later ones are
    replayed identically).
    """

    def __init__(self, directory: os.PathLike, evaluation: "RetrievalEvaluation", metric: str = "map@r",
                 patience: int = 0, initial_epoch: int = 0, state_from: Optional[os.PathLike] = None):
        super().__init__()
        self.directory, self.evaluation, self.metric, self.patience = Path(directory), evaluation, metric, patience
        state = runs.read_best(state_from or self.directory) or {}  # (a multi-worker task: the chief's state)
        self.values = [v for v in state.get("values", []) if v["epoch"] <= initial_epoch]
        self.stopped_early: Optional[int] = None

    def best(self) -> Optional[dict]:
        """The best recorded epoch (the earliest among equals), or None."""
        return max(self.values, key=lambda v: (v["value"], -v["epoch"]), default=None)

    def on_epoch_end(self, epoch, logs=None):
        value = float(self.evaluation.history[-1][self.metric])
        before = self.best()
        self.values.append({"epoch": epoch + 1, "value": value})
        self.directory.mkdir(parents=True, exist_ok=True)
        if before is None or value > before["value"]:
            runs.save_model(self.model, self.directory / "best.keras", f"the best model (epoch {epoch + 1})",
                            _kept(self.directory))
        best = self.best()
        if self.patience and epoch + 1 - best["epoch"] >= self.patience:
            self.stopped_early = epoch + 1
            self.model.stop_training = True
            log.info("No better validation %s for %d epochs: stopping at epoch %d (best: epoch %d, %.4f).",
                     self.metric, self.patience, epoch + 1, best["epoch"], best["value"])
        state = {"metric": self.metric, "epoch": best["epoch"], "value": best["value"], "values": self.values,
                 "stopped_early": self.stopped_early}
        write_json(self.directory / "best.json", state)
