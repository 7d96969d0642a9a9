"""Keras callbacks for your own training loop: whole-set retrieval metrics in the epoch logs.

    cb = tfsim.callbacks.RetrievalEvaluation(x_test, y_test, ks=(1, 2))
    stop = keras.callbacks.EarlyStopping("val_recall@1", mode="max", patience=3)
    history = model.fit(ds, steps_per_epoch=60, epochs=20, callbacks=[cb, stop])
    history.history["val_recall@1"], history.history["val_map@r"]

At each epoch end `RetrievalEvaluation` embeds its evaluation set with the model (no
augmentation, in inference mode), computes Recall@K and MAP@R over the whole set
(`tfsim.metrics.retrieval_metrics`: never averaged per batch) and writes them into the epoch's
`logs`. Keras hands that one dict to the callbacks after it, then to `History` and the progress
bar (which Keras adds after yours), so `History`, TensorBoard, EarlyStopping and ModelCheckpoint
see the values when they come after it in the `callbacks` list. Keras cannot tell whether an
unknown metric should grow: give `mode="max"` to EarlyStopping and ModelCheckpoint.

The evaluation set, in one of three protocols:
  * leave-one-out, `RetrievalEvaluation(x, y)`: every item queries all the others;
  * query / gallery, `RetrievalEvaluation(x_query, y_query, gallery=(x_gallery, y_gallery))`:
    every query searches the gallery only;
  * one set with `query_mask` (bool `[N]`): its true rows query its false rows (In-Shop).
Inputs are NumPy arrays (a dict, list or tuple of them for a model of several inputs), batched
by `batch_size`, or a batched `tf.data.Dataset`: of inputs with `y` given, or of `(inputs,
labels)` batches with `y=None` (each batch's labels are read with its inputs at every evaluation,
so a dataset that shuffles stays aligned).

The training pipeline uses this callback too (`tfsim.training.callbacks`), with
`key_style="_at_"`: `val_recall_at_1`, `val_map_at_r`, the names its run folders' TensorBoard
scalars have always had.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfsim import distances
from tfsim.evaluation.embed import embed_dataset, embed_pairs
from tfsim.evaluation.metrics import retrieval_metrics

__all__ = ["RetrievalEvaluation"]

log = logging.getLogger(__name__)

# key_style -> how "recall" and K, or "map" and "r", are joined in the log keys.
KEY_STYLES = {"@": "@", "_at_": "_at_"}


def _rows(x) -> int:
    return int(np.shape(tf.nest.flatten(x)[0])[0])


class _EvaluationSet:
    """One set the callback embeds: a dataset of input batches with fixed labels, or a dataset of
    `(inputs, labels)` batches (`paired`)."""

    def __init__(self, x, y, batch_size: int, name: str):
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            self.paired = y is None
            if self.paired and not (isinstance(spec, tuple) and len(spec) == 2):
                raise ValueError(
                    f"Invalid value for `{name}`: a tf.data.Dataset without labels given needs (inputs, labels) "
                    f"batches. Received: a dataset of {spec}. Pass the labels as `y`, or map the dataset to pairs.")
            if x.cardinality() == tf.data.INFINITE_CARDINALITY:
                raise ValueError(f"Invalid value for `{name}`: expected a finite dataset (the whole evaluation set, "
                                 "once). Received: an infinite dataset (drop its `.repeat()`).")
            self.dataset = x
            self.labels = None if self.paired else self._labels(y, None, name)
            return
        if isinstance(x, list) and x and all(isinstance(a, np.ndarray) for a in x):
            x = tuple(x)  # (Keras' convention: a list of arrays is the inputs of a model of several)
        if y is None:
            raise ValueError(f"Invalid arguments: `{name}` is an array, so its labels are needed. Pass "
                             f"RetrievalEvaluation(x, y, ...) or gallery=(x_gallery, y_gallery).")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"Invalid value for `batch_size`: expected an integer >= 1. Received: "
                             f"batch_size={batch_size!r}")
        self.paired = False
        self.labels = self._labels(y, _rows(x), name)
        self.dataset = tf.data.Dataset.from_tensor_slices(x).batch(int(batch_size))

    @staticmethod
    def _labels(y, rows: Optional[int], name: str) -> np.ndarray:
        labels = np.asarray(y).reshape(-1)
        if rows is not None and len(labels) != rows:
            raise ValueError(f"Invalid labels for `{name}`: expected one label per row ({rows}). Received: "
                             f"{len(labels)} labels")
        return labels

    def embed(self, model, eager: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.paired:
            return embed_pairs(model, self.dataset, eager)
        embeddings = embed_dataset(model, self.dataset, eager=eager)
        if len(embeddings) != len(self.labels):
            raise ValueError(f"The evaluation dataset gave {len(embeddings)} embeddings for {len(self.labels)} "
                             "labels: pass a batched dataset of the whole set, in the labels' order.")
        return embeddings, self.labels


class RetrievalEvaluation(keras.callbacks.Callback):
    """Embeds an evaluation set at each epoch end and writes `val_recall@K` and `val_map@r` to
    the epoch logs (see module doc).

    Args:
        x: the evaluation (query) inputs: an array (or a dict/list/tuple of arrays), or a
            batched `tf.data.Dataset` of inputs (with `y`) or of `(inputs, labels)` (`y=None`).
        y: int `[N]` labels of `x`, or None for a dataset of pairs.
        ks: the K of Recall@K, each >= 1.
        similarity: the retrieval score: a name in `tfsim.distances.DISTANCES` ("cosine",
            "dot", "L2", "squared-L2").
        gallery: `(x_gallery, y_gallery)` (same forms as `x`, `y`; `(dataset, None)` for a
            dataset of pairs): `x` queries this gallery instead of itself.
        query_mask: bool `[N]`: these rows of `x` query the others (one set, not with `gallery`).
        batch_size: rows per batch when `x` is an array.
        embedder: the model that embeds (default: the model being fitted; pass the embedder
            when fitting a wrapper, such as a model ending in class proxies).
        prefix: the log keys' prefix (Keras' validation metrics start with "val_").
        key_style: "@" (`val_recall@1`, `val_map@r`: tfsim's metric names) or "_at_"
            (`val_recall_at_1`, `val_map_at_r`: names that are also Python identifiers).
        eager: embed batch by batch outside tf.function (under a multi-worker strategy).

    Attributes:
        history: each evaluation's full metrics dict (`retrieval_metrics`: also `r_precision`,
            `precision@K`, `num_queries`), one per epoch.
        last_embeddings: the latest embeddings of `x` (`last_gallery_embeddings`: of the gallery).

    Raises:
        ValueError: labels that do not match the inputs, an unknown similarity or key style,
            `gallery` with `query_mask`, an infinite dataset.

    Example:
        >>> cb = RetrievalEvaluation(x_test, y_test, ks=(1, 2))
        >>> model.fit(ds, steps_per_epoch=60, epochs=2, callbacks=[cb]).history["val_recall@1"]
    """

    def __init__(self, x, y=None, ks: Sequence[int] = (1, 2, 4, 8), similarity: str = "cosine", *,
                 gallery=None, query_mask=None, batch_size: int = 256, embedder=None, prefix: str = "val_",
                 key_style: str = "@", eager: bool = False):
        super().__init__()
        distances.get_distance(similarity)  # an unknown name fails here, not after the first epoch
        ks = tuple(ks)
        if not ks or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in ks):
            raise ValueError(f"Invalid value for `ks`: expected integers >= 1 (the K of Recall@K). Received: ks={ks}")
        if key_style not in KEY_STYLES:
            raise ValueError(f"Invalid value for `key_style`: expected one of {list(KEY_STYLES)}. Received: "
                             f"key_style={key_style!r}")
        if gallery is not None and query_mask is not None:
            raise ValueError("Invalid arguments: pass either `gallery` (a separate gallery) or `query_mask` (rows of "
                             "`x` that query the others), not both.")
        self.queries = _EvaluationSet(x, y, batch_size, "x")
        self.gallery = None
        if gallery is not None:
            if not (isinstance(gallery, (tuple, list)) and len(gallery) == 2):
                raise ValueError("Invalid value for `gallery`: expected a pair (x_gallery, y_gallery), or "
                                 f"(dataset_of_pairs, None). Received: {type(gallery).__name__}")
            self.gallery = _EvaluationSet(gallery[0], gallery[1], batch_size, "gallery")
        if query_mask is not None:
            query_mask = np.asarray(query_mask, bool).reshape(-1)
            if self.queries.labels is not None and len(query_mask) != len(self.queries.labels):
                raise ValueError(f"Invalid value for `query_mask`: expected one flag per row of `x` "
                                 f"({len(self.queries.labels)}). Received: {len(query_mask)} flags")
        searched = self.gallery.labels if self.gallery is not None else (
            None if self.queries.labels is None else self.queries.labels[~query_mask] if query_mask is not None
            else self.queries.labels[1:])  # (leave-one-out: all but the query)
        if searched is not None and len(searched) < max(ks):
            raise ValueError(f"Invalid value for `ks`: Recall@{max(ks)} needs at least {max(ks)} gallery items per "
                             f"query; the evaluation set gives {len(searched)}. Lower `ks` or evaluate on more items.")
        self.ks, self.similarity, self.query_mask = ks, similarity, query_mask
        self.embedder, self.eager, self.prefix, self.key_style = embedder, eager, prefix, key_style
        self.history: list[dict] = []
        self.last_embeddings: Optional[np.ndarray] = None
        self.last_gallery_embeddings: Optional[np.ndarray] = None

    @property
    def labels(self) -> Optional[np.ndarray]:
        """The labels of `x` (None for a dataset of pairs: read at each evaluation)."""
        return self.queries.labels

    def log_keys(self) -> dict[str, str]:
        """{metrics key (`recall@1`, ..., `map@r`): its log key (`val_recall@1`, ...)}."""
        at = KEY_STYLES[self.key_style]
        keys = {f"recall@{k}": f"{self.prefix}recall{at}{k}" for k in self.ks}
        keys["map@r"] = f"{self.prefix}map{at}r"
        return keys

    def evaluate(self, model=None) -> dict:
        """The retrieval metrics of `model` (default: the embedder, else the fitted model) now."""
        if model is None:
            model = self.embedder if self.embedder is not None else self.model
        queries, query_labels = self.queries.embed(model, self.eager)
        self.last_embeddings = queries
        if self.gallery is None:
            return retrieval_metrics(queries, query_labels, self.ks, self.similarity, self.query_mask)
        gallery, gallery_labels = self.gallery.embed(model, self.eager)
        self.last_gallery_embeddings = gallery
        return retrieval_metrics(queries, query_labels, self.ks, self.similarity,
                                 gallery=(gallery, gallery_labels))

    def on_epoch_end(self, epoch, logs=None):
        metrics = self.evaluate()
        self.history.append(metrics)
        if logs is not None:
            for name, key in self.log_keys().items():
                logs[key] = metrics[name]
        k = self.ks[0]
        log.info("epoch %d: held-out recall@%d %.4f, map@r %.4f", epoch + 1, k, metrics[f"recall@{k}"],
                 metrics["map@r"])
