"""`pk_dataset`: P x K training batches for your own Keras model, from arrays, image files or a
`tf.data.Dataset`.

    ds = tfsim.data.pk_dataset(x_train, y_train, classes_per_batch=4, examples_per_class=8, seed=0)
    model.fit(ds, steps_per_epoch=60, epochs=2)

Every batch holds P = `classes_per_batch` distinct classes and K = `examples_per_class` rows of
each, label-contiguous (`[c0]*K + [c1]*K + ...`), as the mining losses (`tfsim.losses`) need. The
rows are drawn by the training pipeline's own sampler (`tfsim.data.samplers.pk_batches`): K
distinct rows of a class when it has that many, with replacement otherwise (or never, with
`small_classes="skip"`); batch `s` is a pure function of `(seed, s)`, so the same seed gives the
same stream and `start_step` resumes it.

The inputs:
  * arrays, no `image_size`: the rows exactly as given (any shape and dtype; strings too; a dict,
    tuple or list of arrays for a model of several inputs, as Keras takes them), gathered by row;
  * images with `image_size`: file paths (str or `pathlib.Path`), decoded by tfsim's decoder, or
    image arrays `[N, H, W, C]` (C 1 or 3, or `[N, H, W]`), both resized to float32
    `[S, S, 3]` in [0, 255] by `tfsim.data.preprocess.preprocess` (what the pipeline and the
    exported SavedModels do), optionally augmented (`tfsim.data.pipeline.augment`: a random shift,
    flips, random erasing; or a random resized crop);
  * a finite `tf.data.Dataset` of `(x, y)` elements or batches: read once into memory (rows of
    one shape), then as arrays. One whose end TensorFlow cannot tell (unknown cardinality, e.g.
    after `filter`) is read only with `max_rows`, a cap past which reading stops with an error.
    For data larger than memory, pass file paths.

Labels are integers; a batch's labels are the given values (not re-numbered). Arrays are held
as tensors the dataset's functions capture (as the pipeline's in-memory sets are). Called eagerly
(the usual way) that takes any size memory holds: a 2 GiB + 64 KiB uint8 array trained
(`model.fit`) and its iterator checkpointed. Called inside a `tf.function` (graph mode),
TensorFlow must write them into the graph as constants, at most 2 GB: arrays over that
(`MAX_ARRAY_BYTES`) are refused up front with the ways out, not left to TensorFlow's
"Cannot create a tensor proto whose content is larger than 2GB".
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from tfsim.data import pipeline, samplers
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.sources import ImageSet

__all__ = ["pk_dataset"]

log = logging.getLogger(__name__)

# In graph mode the in-memory arrays become constants of the graph, which TensorFlow serialises in
# at most 2 GB: together they must fit, with room left for the graph itself.
MAX_ARRAY_BYTES = 2**31 - 2**24


def _nbytes(leaf) -> int:
    """About the bytes `leaf` takes as a TensorFlow tensor (strings: their characters)."""
    array = np.asarray(leaf)
    if array.dtype.kind == "U":  # (NumPy holds 4 bytes per character; TensorFlow their UTF-8)
        return array.nbytes // 4
    if array.dtype.kind == "O":
        return sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in array.reshape(-1).tolist())
    return array.nbytes


def _check_size(nbytes: int, what: str) -> None:
    """Raises ValueError where TensorFlow would fail to write the arrays into a graph (see the module doc)."""
    if nbytes > MAX_ARRAY_BYTES and not tf.executing_eagerly():
        raise ValueError(f"Invalid value for `x`: {what} hold {nbytes / 2**30:.2f} GiB, and pk_dataset was called in "
                         "graph mode (inside a tf.function), where TensorFlow writes them into the graph as "
                         "constants, at most 2 GiB. Call pk_dataset eagerly (outside any tf.function: no limit "
                         "but memory), pass image file paths with `image_size` (decoded as they are read), hold "
                         "images as uint8 (a quarter of float32), or use fewer rows.")


def _read_dataset(dataset: tf.data.Dataset, max_rows: Optional[int]) -> tuple:
    """`(x, y)` NumPy arrays (x a nest for nested elements) of a finite dataset of `(x, y)` elements
    or batches, read once (at most `max_rows` rows)."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError("Invalid value for `x`: expected a tf.data.Dataset of (x, y) elements or batches. "
                         f"Received: a dataset of {spec}")
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("Invalid value for `x`: expected a finite tf.data.Dataset (it is read once, into memory). "
                         "Received: an infinite dataset; drop its `.repeat()` (pk_dataset repeats by itself).")
    if cardinality == tf.data.UNKNOWN_CARDINALITY and max_rows is None:
        raise ValueError("Invalid value for `x`: TensorFlow cannot tell whether this tf.data.Dataset ends (its "
                         "cardinality is unknown, as after `filter`; `.repeat().filter(...)` never ends), and "
                         "pk_dataset reads it into memory. Pass `max_rows=N`, the most rows to read (an error past "
                         "it), or declare its size: `dataset.apply(tf.data.experimental.assert_cardinality(n))`.")
    rank = spec[1].shape.rank
    if rank == 1:  # batches of (x, y): the rows
        dataset = dataset.unbatch()
    elif rank != 0:
        raise ValueError(f"Invalid value for `x`: expected one integer label per element (or [B] per batch). "
                         f"Received: labels of shape {spec[1].shape}")
    if max_rows is not None:
        dataset = dataset.take(max_rows + 1)  # (one more than allowed tells that there are more)
    xs, ys, rows = [], [], 0
    blocks = pipeline.without_autotune(dataset.batch(4096)).as_numpy_iterator()
    while True:
        try:
            x, y = next(blocks)
        except StopIteration:
            break
        except (tf.errors.InvalidArgumentError, ValueError) as e:
            raise ValueError("Could not read the tf.data.Dataset into arrays: its elements must all have one shape "
                             f"(resize images first, or pass file paths with `image_size`). TensorFlow said: {e}"
                             ) from e
        xs.append(x)
        ys.append(y)
        rows += len(y)
    if max_rows is not None and rows > max_rows:
        raise ValueError(f"Invalid value for `x`: the tf.data.Dataset holds more than max_rows={max_rows} rows "
                         "(reading stopped there). Pass a larger `max_rows` if it does end, or take the rows you "
                         "want first (`dataset.take(n)`).")
    if not xs:
        raise ValueError("Invalid value for `x`: the tf.data.Dataset is empty.")
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *xs), np.concatenate(ys)


def _is_paths(x) -> bool:
    if isinstance(x, (str, bytes, os.PathLike, dict)):
        return False
    if isinstance(x, (list, tuple)):  # (every item checked: a sequence of paths, not of arrays)
        return len(x) > 0 and all(isinstance(v, (str, bytes, os.PathLike)) for v in x)
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "USO" and x.ndim == 1 and len(x):
            return isinstance(x[0], (str, bytes, os.PathLike))
        return False
    try:
        first = next(iter(x))
    except (TypeError, StopIteration):
        return False
    return isinstance(first, (str, bytes, os.PathLike))


def _several_inputs(x, y) -> object:
    """Keras's convention: a list of arrays is a model's several inputs (as a tuple here), unless
    it is one array per labelled row (as many arrays as labels, not all of that many rows)."""
    if not (isinstance(x, list) and x and all(isinstance(v, (np.ndarray, tf.Tensor)) and np.ndim(v) >= 1
                                              for v in x)):
        return x
    labels = np.shape(y)[0] if np.ndim(y) >= 1 else None
    per_row = len(x) == labels and any(np.shape(v)[0] != labels for v in x)
    return x if per_row else tuple(x)


def _labels(y, rows: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        hint = (" Map class names to integers first: `names, y = np.unique(y, return_inverse=True)`."
                if labels.dtype.kind in "USO" else "")
        raise ValueError(f"Invalid value for `y`: expected integer class labels [N]. Received: shape "
                         f"{labels.shape}, dtype {labels.dtype}.{hint}")
    if len(labels) != rows:
        raise ValueError(f"Invalid value for `y`: expected one label per row of `x` ({rows}). Received: "
                         f"{len(labels)} labels")
    return labels


def _image_set(x, labels: np.ndarray, paths: bool, max_pixels: int) -> tuple[ImageSet, np.ndarray]:
    """The ImageSet the pipeline's loaders take (labels re-numbered 0..C-1), and the classes."""
    classes, index = np.unique(labels, return_inverse=True)
    common = dict(labels=index.astype(np.int32).reshape(-1), ids=np.arange(len(labels)).astype(str),
                  class_names=tuple(str(c) for c in classes), name="pk_dataset", max_pixels=max_pixels)
    if paths:
        files = np.array([os.fsdecode(os.fspath(p)) for p in x])
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"Invalid value for `x`: {len(missing)} of the {len(files)} image files do not exist, "
                             f"e.g. {missing[:3]}.")
        return ImageSet(paths=files, **common), classes
    images = np.asarray(x)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype.kind not in "uif":
        raise ValueError("Invalid value for `x` with `image_size`: expected file paths or images [N, H, W, C] "
                         f"(C = 1 or 3, or [N, H, W]) of pixel values in [0, 255]. Received: shape {images.shape}, "
                         f"dtype {images.dtype}. Leave image_size=None to batch the rows exactly as given.")
    return ImageSet(images=images, **common), classes


def pk_dataset(x, y=None, *, classes_per_batch: int, examples_per_class: int, seed: int = 0,
               image_size: Optional[int] = None, augment: bool = False, augmentation: str = "shift",
               flip: bool = False, erase_prob: float = 0.0, small_classes: str = "replace", start_step: int = 0,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_rows: Optional[int] = None) -> tf.data.Dataset:
    """An infinite `tf.data.Dataset` of `(x, y)` batches of P x K rows (see module doc).

    Args:
        x: arrays (`[N, ...]`, any dtype; a dict, tuple or list of them for several inputs),
            file paths (a list, tuple or array of str or `pathlib.Path`, with `image_size`), or a
            finite `tf.data.Dataset` of `(x, y)` elements or batches (`y` then None). In graph
            mode (inside a tf.function), in-memory arrays of at most 2 GiB in all.
        y: int `[N]` class labels of the rows of `x`.
        classes_per_batch: P, distinct classes per batch (>= 2).
        examples_per_class: K, rows per class in a batch (>= 2).
        seed: the stream's seed (batches and augmentation).
        image_size: S: decode file paths / resize image arrays to float32 `[S, S, 3]` in [0, 255]
            as the pipeline does; None: rows exactly as given.
        augment: augment the images (needs `image_size`): `augmentation` "shift" (a random
            shift of up to 10% of the side) or "random_resized_crop" (a random crop of each image
            at its own size, resized to S); `flip`: random left-right mirroring; `erase_prob`:
            probability of erasing a random rectangle.
        small_classes: a class with fewer than K rows is sampled with replacement ("replace")
            or never drawn ("skip").
        start_step: the first batch's index (to resume a stream).
        max_pixels: the largest image (width x height) decoded from a file.
        max_rows: with a `tf.data.Dataset` `x`: the most rows read from it; needed when its
            cardinality is unknown (after `filter`, for one). Past it, reading stops with an error.

    Returns:
        An infinite `tf.data.Dataset` of `(x [P*K, ...], y [P*K])`; rows `[i*K:(i+1)*K]` share a
        class, and the P classes of a batch are distinct.
        tf.data's autotuning is off on it: on TensorFlow 2.20 deleting an autotuned iterator (as
        `fit` does when it returns) can wait seconds (`tfsim.data.pipeline.without_autotune`).

    Raises:
        ValueError: too few classes (< P) or rows (< P*K), P or K < 2, labels that are not one
            integer per row, augmentation without `image_size`, missing image files, an
            infinite or empty dataset, one of unknown cardinality without `max_rows` or with more
            rows than it, arrays over 2 GiB in graph mode.

    Example:
        >>> ds = pk_dataset(x_train, y_train, classes_per_batch=4, examples_per_class=8, seed=0)
        >>> x, y = next(iter(ds))  # y: 4 classes x 8 rows each
    """
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("Invalid arguments: `x` is a tf.data.Dataset of (x, y), so `y` must be None. "
                             "Received: y of type " + type(y).__name__)
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer))
                                     or max_rows < 1):
            raise ValueError(f"Invalid value for `max_rows`: expected an integer >= 1, the most rows read from the "
                             f"tf.data.Dataset. Received: max_rows={max_rows!r}")
        x, y = _read_dataset(x, None if max_rows is None else int(max_rows))
    elif max_rows is not None:
        raise ValueError("Invalid arguments: `max_rows` caps the rows read from a tf.data.Dataset `x`; the arrays "
                         "or paths given are read whole. Leave max_rows=None.")
    elif y is None:
        raise ValueError("Invalid arguments: expected labels `y` for the rows of `x` (or a tf.data.Dataset of "
                         "(x, y) as `x`).")
    else:
        x = _several_inputs(x, y)
    if augment and image_size is None:
        raise ValueError("Invalid arguments: `augment=True` needs `image_size` (augmentation works on images "
                         "resized to [S, S, 3]). Pass image_size=..., or augment in your model.")
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
        raise ValueError(f"Invalid value for `image_size`: expected an integer >= 1 (pixels). Received: "
                         f"image_size={image_size!r}")
    paths = _is_paths(x)
    if image_size is not None:
        rows = len(x) if paths else int(np.shape(x)[0])
        labels = _labels(y, rows)
        images, classes = _image_set(x, labels, paths, max_pixels)
        if not paths:
            _check_size(_nbytes(images.images), "the images")
        batches = pipeline.train_dataset(images, classes_per_batch, examples_per_class, int(image_size), seed=seed,
                                         augment_images=augment, start_step=start_step, kind="pk",
                                         erase_prob=erase_prob, flip=flip, small_classes=small_classes,
                                         augmentation=augmentation)
        classes_t = tf.constant(classes)
        return batches.map(lambda images, index: (images, tf.gather(classes_t, index)))
    first = next(iter(x)) if paths else None
    if isinstance(first, os.PathLike):
        raise ValueError("Invalid value for `x`: file paths (pathlib.Path) need `image_size` to be decoded into "
                         "images. Pass image_size=..., or strings to batch them as strings.")
    if paths and os.path.isfile(os.fsdecode(first)):
        log.warning("pk_dataset: `x` looks like file paths, batched as strings since image_size is None; pass "
                    "image_size=... to decode the images.")
    if paths or not isinstance(x, (dict, tuple)):
        x = np.asarray(x)
    leaves = tf.nest.flatten(x)
    rows = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if len(rows) != 1 or -1 in rows:
        raise ValueError(f"Invalid value for `x`: expected arrays [N, ...] with the same number of rows N. "
                         f"Received: row counts {sorted(rows)}")
    labels = _labels(y, rows.pop())
    _check_size(sum(_nbytes(leaf) for leaf in leaves) + labels.nbytes, "the arrays of `x`")
    table = tf.nest.map_structure(tf.constant, x)
    labels_t = tf.constant(labels)
    order = samplers.pk_batches(labels, classes_per_batch, examples_per_class, seed, start_step, small_classes)

    def gather(rows):
        return tf.nest.map_structure(lambda t: tf.gather(t, rows), table), tf.gather(labels_t, rows)

    return pipeline.without_autotune(order.map(gather, num_parallel_calls=tf.data.AUTOTUNE,
                                               deterministic=True).prefetch(tf.data.AUTOTUNE))
