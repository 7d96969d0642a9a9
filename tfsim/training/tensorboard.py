"""What a run shows in TensorBoard (`tensorboard --logdir runs`): one TensorBoard run per
training run, its `tensorboard/` folder, so that a logdir of many runs lists each once.

    EpochScalars        -> scalars per epoch: `train/loss`, `train/learning_rate`,
                           `train/images_per_second` (TrainingRate) and `held_out/recall_at_K`,
                           `held_out/map_at_r` (RetrievalEvaluation's `val_` logs: the network
                           before whitening, on the held-out classes). It replaces Keras'
                           TensorBoard callback, which writes `train/` and `validation/` sub-runs.
    NeighbourPictures   -> image `held_out/neighbours` per epoch: fixed held-out queries (one per
                           class, up to 8), each followed by its 5 nearest held-out images, framed
                           green when of the query's class, red otherwise; class names under the
                           pictures and a legend above them
    write_projector     -> the PROJECTOR tab: `projector_config.pbtxt` in the run's folder (where
                           the projector plugin looks: in each run folder, i.e. each folder with
                           event files), the embeddings of the final model with their labels and
                           a sprite of thumbnails in `projector/`

The scalars and the pictures go through one summary writer per folder (`run_writer`):
TensorBoard keeps reading only the newest event file of a folder while it runs, so a second
writer's file would hide the first one's new events until TensorBoard restarts. The HPARAMS
tab is the tune command's (`tfsim.tuning.report.write_hparams_trial`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfsim.data.preprocess import preprocess, to_uint8
from tfsim.data.sources import ImageSet
from tfsim.evaluation.knn import exact_knn

GREEN, RED = (0, 170, 0), (220, 0, 0)
NEIGHBOURS_TAG = "held_out/neighbours"

_WRITERS: dict[str, tf.summary.SummaryWriter] = {}


def run_writer(logdir: Path) -> tf.summary.SummaryWriter:
    """This process's summary writer of `logdir`, created on first use (see module doc)."""
    key = str(Path(logdir).absolute())
    if key not in _WRITERS:
        _WRITERS[key] = tf.summary.create_file_writer(key)
    return _WRITERS[key]


def close_run_writer(logdir: Path) -> None:
    """Closes `run_writer(logdir)` if open (the next use opens a new event file)."""
    writer = _WRITERS.pop(str(Path(logdir).absolute()), None)
    if writer is not None:
        writer.close()


def scalar_tag(key: str) -> str:
    """A Keras log key -> its TensorBoard tag: `val_map_at_r` -> `held_out/map_at_r`, `loss` -> `train/loss`."""
    return f"held_out/{key[len('val_'):]}" if key.startswith("val_") else f"train/{key}"


class EpochScalars(keras.callbacks.Callback):
    """Writes every number of each epoch's logs as a scalar of `logdir` (step: the epoch, from 0),
    tagged by `scalar_tag`. Place it after the callbacks that add to the logs (TrainingRate,
    RetrievalEvaluation)."""

    def __init__(self, logdir: Path):
        super().__init__()
        self.logdir = Path(logdir)

    def on_epoch_end(self, epoch, logs=None):
        values = {}
        for key, value in (logs or {}).items():
            try:
                values[key] = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
        writer = run_writer(self.logdir)
        with writer.as_default():
            for key, value in values.items():
                tf.summary.scalar(scalar_tag(key), value, step=epoch)
        writer.flush()

    def on_train_end(self, logs=None):
        close_run_writer(self.logdir)


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
    """uint8 `[n, size, size, 3]` pictures of `rows` (decoded as the pipeline decodes them). Images
    of one shape are resized in one batch: one by one, the projector's 2,000 took ~8 s a run."""
    pictures = images.load_images(list(rows))
    out = np.empty((len(pictures), size, size, 3), np.uint8)
    by_shape: dict[tuple, list[int]] = {}
    for i, picture in enumerate(pictures):
        by_shape.setdefault(np.shape(picture), []).append(i)
    for same_shape in by_shape.values():
        batch = tf.constant(np.stack([pictures[i] for i in same_shape]))
        out[same_shape] = to_uint8(preprocess(batch, size)).numpy()
    return out


def _fit_text(draw, text: str, font, width: int) -> str:
    """`text`, cut with "…" to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def neighbour_grid(pictures: np.ndarray, same_class: np.ndarray, names: Sequence[Sequence[str]],
                   border: int = 3) -> np.ndarray:
    """One uint8 RGB image: a legend, then a row per query: its picture, then its neighbours,
    nearest first, framed green (the query's class) or red (another class); each picture's class
    name below it (in the frame's colour for neighbours).

    Args:
        pictures: uint8 `[Q, 1 + k, S, S, 3]`: each query's picture then its k neighbours'.
        same_class: bool `[Q, k]`.
        names: `[Q][1 + k]` class names of those pictures.

    Returns:
        uint8 `[H, (1 + k) * (S + 2 * border), 3]`.
    """
    from PIL import Image, ImageDraw, ImageFont  # lazy: PIL only when pictures are drawn

    q, cols, s = pictures.shape[0], pictures.shape[1], pictures.shape[2]
    cell, line = s + 2 * border, 13
    legend_h, caption_h = 2 * line + 6, line + 2
    row_h = cell + caption_h + 3
    width = max(cols * cell, 260)
    canvas = Image.new("RGB", (width, legend_h + q * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    black, grey = (0, 0, 0), (90, 90, 90)
    draw.text((2, 1), _fit_text(draw, f"Left: a held-out query. Then its {cols - 1} nearest held-out images, "
                                "nearest first.", font, width - 4), fill=grey, font=font)
    x = 2
    for colour, text in ((GREEN, "same class as the query"), (RED, "another class")):
        y = line + 4
        draw.rectangle([x, y, x + 9, y + 9], fill=colour)
        draw.text((x + 13, y - 1), text, fill=black, font=font)
        x += 13 + int(draw.textlength(text, font=font)) + 14
    for i in range(q):
        top = legend_h + i * row_h
        for j in range(cols):
            left = j * cell
            if j > 0:
                draw.rectangle([left, top, left + cell - 1, top + cell - 1],
                               fill=GREEN if same_class[i, j - 1] else RED)
            canvas.paste(Image.fromarray(np.asarray(pictures[i, j], np.uint8)), (left + border, top + border))
            colour = black if j == 0 else (GREEN if same_class[i, j - 1] else RED)
            draw.text((left + 1, top + cell), _fit_text(draw, names[i][j], font, cell - 2), fill=colour, font=font)
    return np.asarray(canvas)


class NeighbourPictures(keras.callbacks.Callback):
    """At each epoch end, the held-out neighbours of a few fixed queries, as the image
    `held_out/neighbours` of `logdir` (through `run_writer`).

    Reads the embeddings `RetrievalEvaluation` just computed (place it after that callback).
    """

    DESCRIPTION = ("Each row: a held-out query (left), then its {k} nearest held-out images at this epoch, "
                   "nearest first, by the network before whitening. Green frame: the query's class; red: "
                   "another class. Class names below the pictures.")

    def __init__(self, evaluation, images: ImageSet, logdir: Path, similarity: str = "cosine", k: int = 5,
                 max_queries: int = 8, size: int = 64):
        super().__init__()
        self.evaluation, self.images, self.similarity, self.k, self.size = evaluation, images, similarity, k, size
        labels = images.labels
        self.queries = np.array([np.flatnonzero(labels == c)[0] for c in np.unique(labels)[:max_queries]])
        self.logdir = Path(logdir)
        self.cache: dict = {}

    def _pictures(self, rows) -> np.ndarray:
        missing = [r for r in rows if r not in self.cache]
        if missing:
            for r, pic in zip(missing, thumbnails(self.images, missing, self.size)):
                self.cache[r] = pic
        return np.stack([self.cache[r] for r in rows])

    def grid(self, embeddings: np.ndarray) -> np.ndarray:
        """The picture for held-out `embeddings` `[N, D]` (rows of `images`)."""
        k = min(self.k, len(embeddings) - 1)
        neighbours = exact_knn(embeddings[self.queries], embeddings, k + 1, self.similarity).indices
        rows = [[q] + [n for n in ns if n != q][:k] for q, ns in zip(self.queries, neighbours)]
        pictures = np.stack([self._pictures(r) for r in rows])
        labels, names = self.images.labels, self.images.class_names
        same = np.array([[labels[n] == labels[r[0]] for n in r[1:]] for r in rows])
        return neighbour_grid(pictures, same, [[names[labels[n]] for n in r] for r in rows])

    def on_epoch_end(self, epoch, logs=None):
        embeddings = self.evaluation.last_embeddings
        if embeddings is None:
            return
        writer = run_writer(self.logdir)
        with writer.as_default():
            tf.summary.image(NEIGHBOURS_TAG, self.grid(embeddings)[None], step=epoch,
                             description=self.DESCRIPTION.format(k=self.k))
        writer.flush()

    def on_train_end(self, logs=None):
        close_run_writer(self.logdir)


PROJECTOR_DIR = "projector"


def write_projector(logdir: Path, embeddings: np.ndarray, images: ImageSet, max_points: int = 2000,
                    seed: int = 0) -> Path:
    """The PROJECTOR tab of the run `logdir`: `logdir/projector_config.pbtxt`, pointing at
    `projector/embeddings.tsv` (the final model's held-out embeddings), `projector/metadata.tsv`
    (their class names) and `projector/sprite.png` (32 px thumbnails), for up to `max_points`
    held-out images (a seeded sample). All paths are relative, so the run folder can be moved.

    The plugin reads `projector_config.pbtxt` only in run folders (folders with event files):
    if `logdir` has none yet, an empty event file is written. Returns the `projector/` folder.
    """
    from tensorboard.plugins import projector  # lazy: TensorBoard's plugin, only for the projector files

    logdir = Path(logdir)
    out = logdir / PROJECTOR_DIR
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / "projector_config.pbtxt", out / "checkpoint", *out.glob("embedding.ckpt-*")]:
        stale.unlink(missing_ok=True)  # a checkpoint here would be read instead of the text table below
    rows = np.arange(len(images))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    (out / "metadata.tsv").write_text("label\n" + "".join(f"{images.class_names[images.labels[r]]}\n" for r in rows))
    # A text table, not a checkpoint: the plugin finds a checkpoint only through an absolute path
    # or in the run folder itself, while a tensor file's path may be relative to the config.
    vectors = np.asarray(embeddings, np.float32)[rows]
    np.savetxt(out / "embeddings.tsv", vectors, fmt="%.6g", delimiter="\t")
    size = 32
    thumbs = thumbnails(images, rows, size)
    side = int(math.ceil(math.sqrt(len(rows))))
    sprite = np.full((side * size, side * size, 3), 255, np.uint8)
    for i, t in enumerate(thumbs):
        y, x = divmod(i, side)
        sprite[y * size:(y + 1) * size, x * size:(x + 1) * size] = t
    (out / "sprite.png").write_bytes(tf.io.encode_png(sprite).numpy())
    config = projector.ProjectorConfig()
    e = config.embeddings.add()
    e.tensor_name = "held_out_embeddings"
    e.tensor_path = f"{PROJECTOR_DIR}/embeddings.tsv"
    e.tensor_shape.extend(vectors.shape)
    e.metadata_path = f"{PROJECTOR_DIR}/metadata.tsv"
    e.sprite.image_path = f"{PROJECTOR_DIR}/sprite.png"
    e.sprite.single_image_dim.extend([size, size])
    projector.visualize_embeddings(str(logdir), config)
    if not list(logdir.glob("events.out.tfevents.*")):
        tf.summary.create_file_writer(str(logdir)).close()
    return out

