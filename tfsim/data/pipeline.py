"""tf.data input pipelines: index batches -> decoded, resized, (augmented) model inputs.

Model inputs are float32 `[B, S, S, 3]` with pixel values in [0, 255], made by
`tfsim.data.preprocess.preprocess` (the same function the exported SavedModel runs on a
query). Normalisation lives inside the model.

Data flow for training:  `samplers.pk_batches` (row indices)
  -> gather in-memory images / read+decode files -> resize -> augment (train only)
  -> `(images, labels)` batches for `model.fit`.
A file-backed training set that fits a memory budget is decoded and resized once per run
(`decode_once`) and then gathered from memory like a shipped one.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from tfsim.data import samplers
from tfsim.data.preprocess import decode_file, preprocess, random_resized_crop, to_uint8
from tfsim.data.sources import ImageSet


def to_model_input(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8/float `[B, H, W, C]` (C in {1, 3}) -> float32 `[B, S, S, 3]` in [0, 255] (`preprocess`)."""
    return preprocess(images, image_size)


def augment(images: tf.Tensor, seed: tf.Tensor, pad_fraction: float = 0.1, erase_prob: float = 0.0,
            erase_sides: tuple[float, float] = (0.2, 0.5), flip: bool = False) -> tf.Tensor:
    """Per-image random translation, optional random horizontal flip and random erasing.

    Args:
        images: float32 `[B, S, S, 3]`.
        seed: int `[2]` stateless seed.
        flip: mirror each image left-right with probability 1/2. Off by default: a mirrored
            digit, letter or text is another symbol, so a folder of unknown content is
            never flipped unless asked; natural-image presets (cars, birds) turn it on.
        pad_fraction: maximum shift, as a fraction of the side, in whole pixels.
        erase_prob: probability that an image gets one rectangle replaced by its mean
            pixel value (random erasing, Zhong et al. 2017, arXiv:1708.04896: a
            regulariser against relying on any one part of the object).
        erase_sides: range of the rectangle's height and width, as fractions of the side.
    """
    s_flip, s_shift = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    s_erase = tf.random.experimental.stateless_fold_in(seed, 0xE2A5E)
    b = tf.shape(images)[0]
    if flip:
        mirrored = tf.random.stateless_uniform([b, 1, 1, 1], seed=s_flip) < 0.5
        images = tf.where(mirrored, tf.reverse(images, axis=[2]), images)
    side = images.shape[1]
    pad = int(round(side * pad_fraction))
    if pad > 0:
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = tf.random.stateless_uniform([b, 2], seed=s_shift, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
        grid = tf.range(side)[None, :]
        rows = offsets[:, :1] + grid  # [B, S] source rows of each image
        cols = offsets[:, 1:] + grid
        shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(shifted, cols, axis=2, batch_dims=1)
    if erase_prob > 0:
        u = tf.random.stateless_uniform([b, 5], seed=s_erase)
        lo, hi = erase_sides
        size = (lo + (hi - lo) * u[:, :2]) * side  # [B, 2] height, width in pixels
        start = u[:, 2:4] * (side - size)
        grid = tf.cast(tf.range(side), tf.float32)[None, :]
        in_rows = (grid >= start[:, :1]) & (grid < start[:, :1] + size[:, :1])  # [B, S]
        in_cols = (grid >= start[:, 1:2]) & (grid < start[:, 1:2] + size[:, 1:2])
        box = in_rows[:, :, None] & in_cols[:, None, :] & (u[:, 4] < erase_prob)[:, None, None]
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        images = tf.where(box[..., None], mean, images)
    return images


def _file_paths(images: ImageSet) -> tf.Tensor:
    """The set's file paths as a string tensor of the files' exact names (bytes, `os.fsencode`):
    a name that is not UTF-8 is a valid file name, but not a str TensorFlow converts."""
    return tf.constant(np.array([os.fsencode(str(p)) for p in images.paths], dtype=object), tf.string)


def _loader(images: ImageSet, image_size: int, center_crop: float = 1.0):
    """Returns `rows [B] -> float32 [B, S, S, 3]` for in-memory or file-backed sets."""
    if images.images is not None:
        table = tf.constant(images.images)
        if center_crop < 1:
            return lambda rows: preprocess(tf.gather(table, rows), image_size, center_crop)
        return lambda rows: to_model_input(tf.gather(table, rows), image_size)
    paths = _file_paths(images)

    def load(rows):
        def one(path):
            return preprocess(decode_file(path, images.max_pixels), image_size, center_crop)
        return tf.map_fn(one, tf.gather(paths, rows), fn_output_signature=tf.float32)

    return load


def _crop_loader(images: ImageSet, image_size: int):
    """Returns `(rows [B], seeds [B, 2]) -> float32 [B, S, S, 3]`: a random resized crop of each
    image at its own size (`preprocess.random_resized_crop`), for training."""
    if images.images is not None:
        table = tf.constant(images.images)
        get = lambda row: tf.gather(table, row)  # noqa: E731
    else:
        paths = _file_paths(images)
        get = lambda row: decode_file(tf.gather(paths, row), images.max_pixels)  # noqa: E731

    def load(rows, seeds):
        return tf.map_fn(lambda a: random_resized_crop(get(a[0]), image_size, a[1]), (rows, seeds),
                         fn_output_signature=tf.float32)

    return load


def train_dataset(images: ImageSet, classes_per_batch: int, examples_per_class: int, image_size: int,
                  seed: int = 0, augment_images: bool = True, start_step: int = 0, kind: str = "pk",
                  batch_size: int = 60, triplets_per_query: int = 4, erase_prob: float = 0.0,
                  flip: bool = False, small_classes: str = "replace", steps_per_epoch: int = 0,
                  augmentation: str = "shift") -> tf.data.Dataset:
    """Infinite `(images [B, S, S, 3], labels [B])` training batches.

    Args:
        images: the training ImageSet (labels as the loss expects them).
        classes_per_batch, examples_per_class: P and K of `kind="pk"` batches (B = P*K).
        image_size: model input side.
        seed: seeds the batches and the augmentation.
        augment_images: apply `augment`.
        erase_prob: random-erasing probability of `augment`.
        flip: random horizontal flips in `augment`.
        start_step: first batch index (to resume).
        kind: "pk", "random" (B = `batch_size`), "epoch" (B = `batch_size`, every image once
            per epoch) or "triplets" (`batch_size` // 3 triplets,
            B = 3 * that); see `tfsim.data.samplers`.
        batch_size: B of random batches, rows of triplet batches.
        triplets_per_query: see `samplers.triplet_batches`.
        small_classes: see `samplers.pk_batches`.
        steps_per_epoch: batches per epoch of `kind="epoch"` (0 = one whole pass).
        augmentation: "shift" (`augment`'s random translation of the resized image) or
            "random_resized_crop" (a random crop of each image at its own size, resized to S,
            instead of the shift; flips and erasing as asked).
    """
    if augmentation not in ("shift", "random_resized_crop"):
        raise ValueError("Invalid value for `augmentation`: expected 'shift' or 'random_resized_crop'. "
                         f"Received: augmentation={augmentation!r}")
    cropping = augment_images and augmentation == "random_resized_crop"
    load = _crop_loader(images, image_size) if cropping else _loader(images, image_size)
    labels = tf.constant(images.labels)
    if kind == "pk":
        rows = samplers.pk_batches(images.labels, classes_per_batch, examples_per_class, seed, start_step,
                                   small_classes)
    elif kind == "random":
        rows = samplers.random_batches(len(images), batch_size, seed, start_step)
    elif kind == "epoch":
        rows = samplers.epoch_batches(len(images), batch_size, steps_per_epoch or len(images) // batch_size, seed,
                                      start_step)
    elif kind == "triplets":
        rows = samplers.triplet_batches(images.labels, max(batch_size // 3, 1), triplets_per_query, seed,
                                        start_step)
    else:
        raise ValueError(f"Invalid value for `kind`: expected 'pk', 'random', 'epoch' or 'triplets'. "
                         f"Received: kind={kind!r}")
    aug_base = tf.constant([seed, 0xA06], tf.int64)

    @tf.autograph.experimental.do_not_convert  # (see `eval_dataset`)
    def make(step, r):
        seed = tf.random.experimental.stateless_fold_in(aug_base, step)
        if cropping:
            crops = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 0xC409),
                                                           tf.size(r))
            x = augment(load(r, crops), seed, pad_fraction=0.0, erase_prob=erase_prob, flip=flip)
        else:
            x = load(r)
            if augment_images:
                x = augment(x, seed, erase_prob=erase_prob, flip=flip)
        return x, tf.gather(labels, r)

    steps = tf.data.Dataset.counter(start_step, dtype=tf.int64)
    return without_autotune(tf.data.Dataset.zip(steps, rows).map(make, num_parallel_calls=tf.data.AUTOTUNE,
                                                                 deterministic=True).prefetch(tf.data.AUTOTUNE))


def eval_dataset(images: ImageSet, image_size: int, batch_size: int = 256, center_crop: float = 1.0) -> tf.data.Dataset:
    """`images [b, S, S, 3]` batches over the whole set in order (no labels, no augmentation;
    `center_crop` as in `preprocess`)."""
    load = _loader(images, image_size, center_crop)
    rows = tf.data.Dataset.range(len(images)).batch(batch_size)
    # Not converted by AutoGraph: these functions branch on Python values only (their tensor branches
    # are tf.cond / tf.while_loop), and converting them cost about 0.35 s of every run.
    batch = tf.autograph.experimental.do_not_convert(lambda r: load(tf.cast(r, tf.int32)))
    return without_autotune(rows.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2))


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off: the datasets tfsim builds and iterates go through
    here (and the TFDS reader of `sources` sets the same option). The option carries over to
    datasets built on this one, and overrides a user's `autotune.enabled` where tfsim iterates their
    dataset (the embedding loop, `pk_dataset`).

    With autotuning on (TensorFlow's default), each iterator runs a tuning thread that sleeps
    between rounds for a period that doubles while the iterator lives, up to a minute. On
    TensorFlow 2.20 deleting the iterator does not wake that thread: the deletion waits for the
    sleep to end. Measured at the end of `model.fit` (its iterator deleted when `fit` returns):
    3-6 s after about half of the 7 s training runs of `bench/peer_parity.py` on sklearn_digits,
    with the thread asleep in `Model::OptimizeLoop` throughout. Off, a parallel map keeps
    AUTOTUNE's starting parallelism (the cores, at most 16) and `prefetch(AUTOTUNE)` grows its
    buffer whenever the consumer finds it empty, with no thread to wait for.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def decode_once(images: ImageSet, image_size: int, max_bytes: int) -> tuple[ImageSet, str]:
    """A file-backed set decoded and resized once into memory, when it fits `max_bytes` twice over
    (the array and the pipeline's tensor copy of it are both held while training).

    The pixels are those the streaming pipeline computes (`preprocess` at `image_size`), rounded
    to uint8 (`to_uint8`: at most half a level from the float ones), `[N, S, S, 3]`; training
    reads them with `tf.gather` instead of decoding files at every step. Augmentation is applied
    to them per step as before.

    Returns:
        `(images, how)`: the in-memory set (or `images` unchanged: already in memory, too large,
        or a file that would not decode) and a sentence saying which, for the log.
    """
    n = len(images)
    if images.images is not None:
        return images, f"{n:,} images in memory"
    size = n * image_size * image_size * 3
    mb = f"{size / 2**20:,.1f} MB"
    if 2 * size > max_bytes:  # held twice while training: the array and the pipeline's tensor of it
        return images, (f"{n:,} images decoded from their files at every step ({mb} decoded at {image_size} px, "
                        f"held twice: over data.cache_mb={max_bytes // 2**20})")
    pixels = np.empty((n, image_size, image_size, 3), np.uint8)
    start = 0
    try:
        for batch in eval_dataset(images, image_size):
            pixels[start:start + len(batch)] = to_uint8(batch).numpy()
            start += len(batch)
    except tf.errors.OpError as err:  # (the folder's check decoded every file; one changed since)
        return images, (f"{n:,} images decoded from their files at every step (decoding them once failed: "
                        f"{err.message.splitlines()[0]})")
    kept = dataclasses.replace(images, images=pixels, paths=None)
    return kept, f"{n:,} images decoded once into memory ({mb} at {image_size} px, data.cache_mb={max_bytes // 2**20})"


def raw_pixels(images: ImageSet, image_size: int, center_crop: float = 1.0) -> np.ndarray:
    """Flattened model-input pixels `[N, S*S*3]` (the raw-pixel retrieval baseline)."""
    feats = [x.numpy().reshape(x.shape[0], -1) for x in eval_dataset(images, image_size, center_crop=center_crop)]
    return np.concatenate(feats)
