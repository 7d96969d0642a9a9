"""What a run shows in TensorBoard beyond Keras' loss curve (`tensorboard --logdir runs`).

    TrainingRate        -> logs: learning_rate, images_per_second (Keras' TensorBoard writes
                           them as epoch_* scalars of the `train` run, next to the loss)
    RetrievalEvaluation -> logs: val_recall_at_K, val_map_at_r (the `validation` run)
    NeighbourPictures   -> `retrieval` run, image `held_out_neighbours` per epoch: fixed held-out
                           queries (one per class, up to 8), each followed by its 5 nearest
                           held-out images, framed green when of the query's class, red otherwise
    write_projector     -> `projector/`: the held-out embeddings of the final model with their
                           labels and a sprite of thumbnails (the PROJECTOR tab)
    write_hparams       -> the run's config as an hparams session (the HPARAMS tab)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfsim.data.sources import ImageSet
from tfsim.evaluation.knn import exact_knn

GREEN, RED = (0, 170, 0), (220, 0, 0)


class TrainingRate(keras.callbacks.Callback):
    """Adds the learning rate and the training images per second of each epoch to the logs.

    Place it before Keras' TensorBoard callback, which then writes them.
    """

    def __init__(self, batch_size: int, steps_per_epoch: int):
        super().__init__()
        self.images = batch_size * steps_per_epoch
        self.start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["images_per_second"] = self.images / max(time.perf_counter() - self.start, 1e-9)
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(np.asarray(lr(self.model.optimizer.iterations) if callable(lr) else lr))


def thumbnails(images: ImageSet, rows, size: int = 48) -> np.ndarray:
    """uint8 `[n, size, size, 3]` pictures of `rows` (decoded as the pipeline decodes them)."""
    from tfsim.data.preprocess import preprocess
    return np.stack([np.clip(np.round(preprocess(tf.constant(img), size).numpy()), 0, 255).astype(np.uint8)
                     for img in images.load_images(list(rows))])


def neighbour_grid(pictures: np.ndarray, same_class: np.ndarray, border: int = 3) -> np.ndarray:
    """One uint8 image: a row per query (its picture, then its neighbours framed green or red).

    Args:
        pictures: uint8 `[Q, 1 + k, S, S, 3]`: each query's picture then its k neighbours'.
        same_class: bool `[Q, k]`.
    """
    q, cols, s = pictures.shape[0], pictures.shape[1], pictures.shape[2]
    cell = s + 2 * border
    grid = np.full((q * cell, cols * cell, 3), 255, np.uint8)
    for i in range(q):
        for j in range(cols):
            y, x = i * cell, j * cell
            if j > 0:
                grid[y:y + cell, x:x + cell] = GREEN if same_class[i, j - 1] else RED
            grid[y + border:y + border + s, x + border:x + border + s] = pictures[i, j]
    return grid


class NeighbourPictures(keras.callbacks.Callback):
    """At each epoch end, the held-out neighbours of a few fixed queries, as a TensorBoard image.

    Reads the embeddings `RetrievalEvaluation` just computed (place it after that callback).
    """

    def __init__(self, evaluation, images: ImageSet, logdir: Path, similarity: str = "cosine", k: int = 5,
                 max_queries: int = 8):
        super().__init__()
        self.evaluation, self.images, self.similarity, self.k = evaluation, images, similarity, k
        labels = images.labels
        self.queries = np.array([np.flatnonzero(labels == c)[0] for c in np.unique(labels)[:max_queries]])
        self.writer = tf.summary.create_file_writer(str(Path(logdir) / "retrieval"))
        self.cache: dict = {}

    def _pictures(self, rows) -> np.ndarray:
        missing = [r for r in rows if r not in self.cache]
        if missing:
            for r, pic in zip(missing, thumbnails(self.images, missing)):
                self.cache[r] = pic
        return np.stack([self.cache[r] for r in rows])

    def on_epoch_end(self, epoch, logs=None):
        embeddings = self.evaluation.last_embeddings
        if embeddings is None:
            return
        neighbours = exact_knn(embeddings[self.queries], embeddings, self.k + 1, self.similarity).indices
        rows = [[q] + [n for n in ns if n != q][: self.k] for q, ns in zip(self.queries, neighbours)]
        pictures = np.stack([self._pictures(r) for r in rows])
        labels = self.images.labels
        same = np.array([[labels[n] == labels[r[0]] for n in r[1:]] for r in rows])
        with self.writer.as_default():
            tf.summary.image("held_out_neighbours", neighbour_grid(pictures, same)[None], step=epoch)
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()


def write_projector(logdir: Path, embeddings: np.ndarray, images: ImageSet, max_points: int = 2000,
                    seed: int = 0) -> Path:
    """The PROJECTOR tab's files under `logdir/projector/`: embeddings (a checkpoint), labels
    (metadata.tsv) and a sprite of 32 px thumbnails, for up to `max_points` held-out images."""
    from tensorboard.plugins import projector

    out = Path(logdir) / "projector"
    out.mkdir(parents=True, exist_ok=True)
    rows = np.arange(len(images))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    (out / "metadata.tsv").write_text("label\n" + "".join(f"{images.class_names[images.labels[r]]}\n" for r in rows))
    size = 32
    thumbs = thumbnails(images, rows, size)
    side = int(math.ceil(math.sqrt(len(rows))))
    sprite = np.full((side * size, side * size, 3), 255, np.uint8)
    for i, t in enumerate(thumbs):
        y, x = divmod(i, side)
        sprite[y * size:(y + 1) * size, x * size:(x + 1) * size] = t
    (out / "sprite.png").write_bytes(tf.io.encode_png(sprite).numpy())
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(np.asarray(embeddings, np.float32)[rows]))
    checkpoint.save(str(out / "embedding.ckpt"))
    config = projector.ProjectorConfig()
    e = config.embeddings.add()
    e.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    e.metadata_path = "metadata.tsv"
    e.sprite.image_path = "sprite.png"
    e.sprite.single_image_dim.extend([size, size])
    projector.visualize_embeddings(str(out), config)
    return out


def write_hparams(logdir: Path, config: dict, metrics: Optional[dict] = None) -> None:
    """The run's config as an hparams session (flattened `section.key` values; lists as text),
    with its final held-out metrics."""
    from tensorboard.plugins.hparams import api as hp_api

    values = {}
    for section, keys in config.items():
        for key, value in (keys or {}).items():
            if value is None:
                continue
            values[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp_api.hparams(values)
        for name, value in (metrics or {}).items():
            tf.summary.scalar(f"final/{name}", value, step=0)
    writer.close()
