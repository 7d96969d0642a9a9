"""The one image preprocessing of tfsim: training, evaluation, pictures and serving all use it.

    encoded bytes --decode--> uint8 [H, W, 3]
    uint8/float [..., H, W, C] --preprocess--> float32 [..., S, S, 3], pixels in [0, 255]

Every decode first reads the image's width and height from its header (`encoded_shape`: JPEG
through `tf.image.extract_jpeg_shape`, PNG, GIF, BMP and WebP from their fixed header fields, with
TF string ops so the check runs inside a serving graph too) and refuses an image of more than
`max_pixels` pixels before any pixel is decoded: a 440 KB PNG can declare 12,000 x 12,000
pixels, which decoding and resizing turn into gigabytes. Data loaders do the same check with
PIL's lazy header read before they touch the pixels (`tfsim.data.sources`).

`preprocess` repeats a grey channel to 3 and resizes to S x S by stretching (bilinear with
antialiasing; an image already S x S is left as it is). Normalisation lives inside the
model, so the exported SavedModel takes exactly these pixels: `serving_default` decodes
and preprocesses encoded images in its graph with these two functions, and a query image
reaches the network as a training image of the same file did (before augmentation).
"""

from __future__ import annotations

import tensorflow as tf

from tfsim.data.formats import DEFAULT_MAX_PIXELS  # the decoders' default limit (readable without TensorFlow)

_HEAD = 32  # header bytes the fixed-field formats need


def _header(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The first `_HEAD` bytes of `data`, zero-padded when shorter: as a string and as int32 `[_HEAD]`."""
    head = tf.strings.substr(data, 0, _HEAD)  # (clipped at the end; never reads the rest)
    head = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * _HEAD)]), 0, _HEAD)
    return head, tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int32)


def _le(b: tf.Tensor, start: int, n: int) -> tf.Tensor:
    """Unsigned little-endian integer of bytes `start..start+n` (int64)."""
    return sum(tf.cast(b[start + i], tf.int64) * (1 << (8 * i)) for i in range(n))


def _be(b: tf.Tensor, start: int, n: int) -> tf.Tensor:
    """Unsigned big-endian integer of bytes `start..start+n` (int64)."""
    return sum(tf.cast(b[start + i], tf.int64) * (1 << (8 * (n - 1 - i))) for i in range(n))


def _signed32(value: tf.Tensor) -> tf.Tensor:
    """|x| of an int32 read as unsigned."""
    return tf.where(value >= 2 ** 31, 2 ** 32 - value, value)


def encoded_shape(data: tf.Tensor) -> tf.Tensor:
    """`[height, width]` int64 that an encoded image declares in its header, without decoding it.

    JPEG: `tf.image.extract_jpeg_shape` (reads the frame header only); PNG (IHDR), GIF (logical
    screen, the canvas every frame is decoded onto), BMP (the int32 fields TF's decoder reads;
    a negative height is a top-down image) and WebP (its VP8X canvas, VP8L or VP8 frame size) from
    fixed header fields. `[-1, -1]` for bytes of no known format: decoding then fails with TF's
    own error.
    """
    data = tf.convert_to_tensor(data, tf.string)
    head, b = _header(data)

    def at(start: int, n: int) -> tf.Tensor:
        return tf.strings.substr(head, start, n)

    webp_bits = _le(b, 21, 4)  # VP8L: 14 bits width - 1, then 14 bits height - 1
    webp = tf.where(tf.equal(at(12, 4), b"VP8X"), tf.stack([_le(b, 27, 3) + 1, _le(b, 24, 3) + 1]),
                    tf.where(tf.equal(at(12, 4), b"VP8L"),
                             tf.stack([(webp_bits // (1 << 14)) % (1 << 14) + 1, webp_bits % (1 << 14) + 1]),
                             tf.stack([_le(b, 28, 2) % (1 << 14), _le(b, 26, 2) % (1 << 14)])))
    cases = [  # (is this format, its [height, width])
        (tf.equal(at(0, 8), b"\x89PNG\r\n\x1a\n"), tf.stack([_be(b, 20, 4), _be(b, 16, 4)])),
        (tf.equal(at(0, 3), b"GIF"), tf.stack([_le(b, 8, 2), _le(b, 6, 2)])),
        (tf.equal(at(0, 2), b"BM"), tf.stack([_signed32(_le(b, 22, 4)), _signed32(_le(b, 18, 4))])),
        (tf.logical_and(tf.equal(at(0, 4), b"RIFF"), tf.equal(at(8, 4), b"WEBP")), webp),
    ]
    shape = tf.constant([-1, -1], tf.int64)
    for is_format, format_shape in reversed(cases):
        shape = tf.where(is_format, format_shape, shape)
    return tf.cond(tf.equal(at(0, 3), b"\xff\xd8\xff"),
                   lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64), lambda: shape)


def _gif_frames(data: tf.Tensor, canvas: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(frames, pixels)` of a GIF: its image descriptors, walked block by block without decoding,
    and the pixels decoding them costs: per frame, the larger of its own area and the canvas's
    (giflib decodes every frame, at the size its descriptor declares, whichever frame is kept).

    The walk reads one block per step (an extension, an image descriptor or a data sub-block),
    so its steps are bounded by the file's length; it stops at the trailer or at a byte that
    starts no block.
    """
    b = tf.concat([tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64), tf.zeros([16], tf.int64)], 0)
    n = tf.cast(tf.strings.length(data), tf.int64)

    def byte(i):
        return tf.gather(b, tf.minimum(tf.cast(i, tf.int64), n))

    def le16(i):
        return byte(i) + 256 * byte(i + 1)

    def table(packed):  # the size of a colour table flagged in a packed byte
        return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8), 0)

    canvas_area = canvas[0] * canvas[1]
    zero = tf.constant(0, tf.int64)

    def step(pos, in_blocks, done, frames, pixels):
        c = byte(pos)
        # inside an extension's or a frame's data: a sub-block of c bytes, or the terminator (0)
        block_pos = tf.where(c == 0, pos + 1, pos + 1 + c)
        is_frame, is_extension = c == 0x2C, c == 0x21
        area = le16(pos + 5) * le16(pos + 7)
        frame_pos = pos + 10 + table(byte(pos + 9)) + 1  # descriptor, local table, LZW code size
        top_pos = tf.where(is_frame, frame_pos, pos + 2)
        return (tf.where(in_blocks, block_pos, top_pos),
                tf.where(in_blocks, c != 0, is_frame | is_extension),
                tf.logical_and(tf.logical_not(in_blocks), tf.logical_not(is_frame | is_extension)),
                frames + tf.where(in_blocks | tf.logical_not(is_frame), zero, 1),
                pixels + tf.where(in_blocks | tf.logical_not(is_frame), zero, tf.maximum(area, canvas_area)))

    start = 13 + table(byte(10))  # header, logical screen descriptor, global colour table
    _, _, _, frames, pixels = tf.while_loop(
        lambda pos, in_blocks, done, frames, pixels: tf.logical_and(pos < n, tf.logical_not(done)), step,
        (start, tf.constant(False), tf.constant(False), zero, zero))
    return frames, pixels


def encoded_pixels(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(shape [height, width], frames, pixels)` int64 that decoding `data` would cost, read from its
    headers without decoding: `encoded_shape`, and for a GIF its frames and the pixels of all of
    them (`_gif_frames`: giflib decodes every frame, each at its own declared size); other formats
    are one frame of height x width. Shape `[-1, -1]` and pixels -1 for bytes of no known format."""
    data = tf.convert_to_tensor(data, tf.string)
    shape = encoded_shape(data)
    is_gif = tf.equal(tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 3), "..."]), 0, 3), b"GIF")
    one = (tf.constant(1, tf.int64), shape[0] * shape[1])
    frames, pixels = tf.cond(is_gif, lambda: _gif_frames(data, shape), lambda: one)
    return shape, frames, tf.where(shape[0] < 0, tf.constant(-1, tf.int64), pixels)


_ENCODED_PIXELS = None


def header_size(data: bytes) -> tuple[int, int, int, int]:
    """`(width, height, frames, pixels)` of encoded image bytes (`encoded_pixels`), for Python callers
    (the loaders, the search command) that check a file before decoding it; pixels -1 when the
    bytes are of no known format or a JPEG header cannot be parsed (the decoder then decides)."""
    global _ENCODED_PIXELS
    if _ENCODED_PIXELS is None:  # traced once per process
        _ENCODED_PIXELS = tf.function(encoded_pixels, input_signature=[tf.TensorSpec([], tf.string)])
    try:
        shape, frames, pixels = _ENCODED_PIXELS(tf.constant(data))
    except tf.errors.InvalidArgumentError:  # a JPEG whose header cannot be parsed: the decoder decides
        return -1, -1, 1, -1
    return int(shape[1]), int(shape[0]), int(frames), int(pixels)


def check_size(data: tf.Tensor, max_pixels: int, name: tf.Tensor | str | None = None) -> tf.Tensor:
    """`data`, once its headers say decoding it costs at most `max_pixels` pixels (`encoded_pixels`),
    else InvalidArgumentError naming its size (and `name`, e.g. its file) and the limit, raised before
    anything is decoded; `max_pixels` 0 or None: no limit."""
    if not max_pixels:
        return data
    shape, frames, pixels = encoded_pixels(data)
    animated = tf.cond(frames > 1, lambda: tf.strings.format(" in {} frames ({} pixels to decode)", (frames, pixels)),
                       lambda: tf.constant(""))
    where = tf.constant("") if name is None else tf.strings.join([" (", name, ")"])
    size = tf.strings.format(" of {} x {} pixels (width x height)", (shape[1], shape[0]))
    limit = tf.strings.format(
        " is above the limit of {} pixels: refused before decoding, so an image whose header declares a huge size "
        "cannot exhaust memory. Send a smaller image, or raise the limit (data.max_pixels when training, "
        "export.max_pixels for an export).", [max_pixels])
    message = tf.strings.join(["Image", where, size, animated, limit])
    with tf.control_dependencies([tf.debugging.Assert(pixels <= max_pixels, [message], summarize=1)]):
        return tf.identity(data)


def decode(data: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS, name=None) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF/WebP bytes (a scalar string) -> uint8 `[H, W, 3]` (first frame of a
    GIF), refused (InvalidArgumentError, naming `name` if given) before decoding when its headers
    declare more than `max_pixels` pixels to decode (`check_size`)."""
    return tf.io.decode_image(check_size(data, max_pixels, name), channels=3, expand_animations=False)


def decode_file(path: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Reads and decodes one image file to uint8 `[H, W, 3]` (`decode`; a refusal names the file)."""
    return decode(tf.io.read_file(path), max_pixels, path)


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


def crop_box(height: tf.Tensor, width: tf.Tensor, uniforms: tf.Tensor, scale=(0.08, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
    """The normalised `[y0, x0, y1, x1]` box of a random resized crop, from 4 uniforms in [0, 1).

    Area `scale[0]..scale[1]` of the image (uniform), aspect ratio (width / height)
    log-uniform in `ratio`, position uniform: torchvision's `RandomResizedCrop` defaults,
    which the metric-learning papers train with. A side longer than the image's is cut to it
    (torchvision retries instead; cutting keeps the op branch-free).
    """
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h * w * (scale[0] + uniforms[0] * (scale[1] - scale[0]))
    log_lo, log_hi = tf.math.log(ratio[0]), tf.math.log(ratio[1])
    aspect = tf.exp(log_lo + uniforms[1] * (log_hi - log_lo))
    crop_w = tf.minimum(tf.sqrt(area * aspect), w)
    crop_h = tf.minimum(tf.sqrt(area / aspect), h)
    x0, y0 = uniforms[2] * (w - crop_w), uniforms[3] * (h - crop_h)
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
