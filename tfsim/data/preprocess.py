"""The one image preprocessing of tfsim: training, evaluation, pictures and serving all use it.

    encoded bytes --decode--> uint8 [H, W, 3]
    uint8/float [..., H, W, C] --preprocess--> float32 [..., S, S, 3], pixels in [0, 255]

`preprocess` repeats a grey channel to 3 and resizes to S x S by stretching (bilinear with
antialiasing; an image already S x S is left as it is). Normalisation lives inside the
model, so the exported SavedModel takes exactly these pixels: `serving_default` decodes
and preprocesses encoded images in its graph with these two functions, and a query image
reaches the network as a training image of the same file did (before augmentation).
"""

from __future__ import annotations

import tensorflow as tf


def decode(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes (a scalar string) -> uint8 `[H, W, 3]` (first frame of a GIF)."""
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def decode_file(path: tf.Tensor) -> tf.Tensor:
    """Reads and decodes one image file to uint8 `[H, W, 3]`."""
    return decode(tf.io.read_file(path))


def preprocess(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8/float `[H, W, C]` or `[B, H, W, C]` (C in {1, 3}) -> float32 `[..., S, S, 3]` in [0, 255].

    Args:
        images: one image or a batch, pixel values in [0, 255].
        image_size: S, the model's input side.
    """
    images = tf.cast(images, tf.float32)
    if images.shape[-1] == 1:
        images = tf.repeat(images, 3, axis=-1)
    height, width = images.shape[-3], images.shape[-2]
    if height == image_size and width == image_size:
        return images
    size = [image_size, image_size]
    if height is not None and width is not None:
        return tf.image.resize(images, size, antialias=True)
    dynamic = tf.shape(images)
    same = tf.logical_and(dynamic[-3] == image_size, dynamic[-2] == image_size)
    out = tf.cond(same, lambda: images, lambda: tf.image.resize(images, size, antialias=True))
    return tf.ensure_shape(out, images.shape[:-3].concatenate([image_size, image_size, 3]))


def to_uint8(images: tf.Tensor) -> tf.Tensor:
    """Preprocessed float pixels rounded back to uint8 (for sets cached in memory)."""
    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
