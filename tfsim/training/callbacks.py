"""Training callbacks: held-out retrieval evaluation per epoch, and resumable checkpoints."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from tfsim.evaluation.metrics import retrieval_metrics

log = logging.getLogger(__name__)


class RetrievalEvaluation(keras.callbacks.Callback):
    """Embeds an evaluation set at each epoch end and writes `val_recall_at_K` / `val_map_at_r` to logs.

    Place it *before* TensorBoard in the callback list: Keras hands the same `logs`
    dict to the callbacks in order, so TensorBoard then records these values.

    Args:
        dataset: `tf.data.Dataset` of image batches over the whole evaluation set, in order.
        labels: int `[N]` labels of that set.
        ks: the K of Recall@K.
        similarity: retrieval score name.
        embedder: the model that embeds (default: the model being fitted; pass the
            embedder when fitting a wrapper such as a proxy trainer).
    """

    def __init__(self, dataset, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                 similarity: str = "cosine", embedder=None):
        super().__init__()
        self.embedder = embedder
        self.dataset, self.labels, self.ks, self.similarity = dataset, np.asarray(labels), tuple(ks), similarity
        self.history: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        model = self.embedder if self.embedder is not None else self.model
        embeddings = model.predict(self.dataset, verbose=0)
        metrics = retrieval_metrics(embeddings, self.labels, self.ks, self.similarity)
        self.history.append(metrics)
        if logs is not None:
            for k in self.ks:
                logs[f"val_recall_at_{k}"] = metrics[f"recall@{k}"]
            logs["val_map_at_r"] = metrics["map@r"]
        log.info("epoch %d: held-out recall@1 %.4f, map@r %.4f", epoch + 1, metrics["recall@1"], metrics["map@r"])


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights + optimizer state) at each epoch end, atomically.

    Writes `<dir>/last.keras` and `<dir>/last.json` (`{"epoch": completed epochs}`),
    each first under a temporary name then renamed, so an interrupted write leaves the
    previous checkpoint intact. `latest(dir)` reads them back for resuming.
    """

    def __init__(self, directory: os.PathLike):
        super().__init__()
        self.directory = Path(directory)

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "last.tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.directory / "last.keras")
        state = self.directory / "last.json.tmp"
        state.write_text(json.dumps({"epoch": epoch + 1}))
        os.replace(state, self.directory / "last.json")

    @staticmethod
    def latest(directory: os.PathLike):
        """`(path of last.keras, completed epochs)` or None if there is no checkpoint."""
        directory = Path(directory)
        if not (directory / "last.keras").is_file() or not (directory / "last.json").is_file():
            return None
        return directory / "last.keras", int(json.loads((directory / "last.json").read_text())["epoch"])
