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


def preprocess(images: tf.Tensor, image_size: int, center_crop: float = 1.0) -> tf.Tensor:
    """uint8/float `[H, W, C]` or `[B, H, W, C]` (C in {1, 3}) -> float32 `[..., S, S, 3]` in [0, 255].

    Args:
        images: one image or a batch, pixel values in [0, 255].
        image_size: S, the model's input side.
        center_crop: fraction of the side kept around the centre: the image is stretched to
            round(S / center_crop) and its central S x S taken (0.875 = the ImageNet "resize
            256, centre crop 224"); 1 = stretched to S x S.
    """
    images = tf.cast(images, tf.float32)
    if images.shape[-1] == 1:
        images = tf.repeat(images, 3, axis=-1)
    if center_crop < 1:
        big = int(round(image_size / center_crop))
        resized = _resize(images, big)
        top = (big - image_size) // 2
        return resized[..., top:top + image_size, top:top + image_size, :]
    return _resize(images, image_size)


def _resize(images: tf.Tensor, image_size: int) -> tf.Tensor:
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


def crop_box(height: tf.Tensor, width: tf.Tensor, u: tf.Tensor, scale=(0.08, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
    """The normalised `[y0, x0, y1, x1]` box of a random resized crop, from 4 uniforms `u`.

    Area `scale[0]..scale[1]` of the image (uniform), aspect ratio (width / height)
    log-uniform in `ratio`, position uniform: torchvision's `RandomResizedCrop` defaults,
    which the metric-learning papers train with. A side longer than the image's is cut to it
    (torchvision retries instead; cutting keeps the op branch-free).
    """
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h * w * (scale[0] + u[0] * (scale[1] - scale[0]))
    log_lo, log_hi = tf.math.log(ratio[0]), tf.math.log(ratio[1])
    aspect = tf.exp(log_lo + u[1] * (log_hi - log_lo))
    crop_w = tf.minimum(tf.sqrt(area * aspect), w)
    crop_h = tf.minimum(tf.sqrt(area / aspect), h)
    x0, y0 = u[2] * (w - crop_w), u[3] * (h - crop_h)
    return tf.stack([y0 / h, x0 / w, (y0 + crop_h) / h, (x0 + crop_w) / w])


def random_resized_crop(image: tf.Tensor, image_size: int, seed: tf.Tensor, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
    """One decoded image `[H, W, C]` -> a random crop (`crop_box`) resized to float32 `[S, S, 3]`.

    The training augmentation of natural-photo presets (Inception-style cropping, as the
    metric-learning papers train on CUB, Cars, SOP); evaluation and serving then use
    `preprocess(..., center_crop=0.875)`. Deterministic in `seed` (int64 `[2]`).
    """
    image = tf.cast(image, tf.float32)
    if image.shape[-1] == 1:
        image = tf.repeat(image, 3, axis=-1)
    shape = tf.shape(image)
    box = crop_box(shape[0], shape[1], tf.random.stateless_uniform([4], seed=seed), scale, ratio)
    return tf.image.crop_and_resize(image[None], box[None], [0], [image_size, image_size])[0]


def to_uint8(images: tf.Tensor) -> tf.Tensor:
    """Preprocessed float pixels rounded back to uint8 (for sets cached in memory)."""
    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
