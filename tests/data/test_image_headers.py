"""The image size read from the header before decoding (`preprocess.encoded_shape`), against PIL's
own reading of real files of every format, and the pixel limit that refuses an image before any
pixel is decoded (`preprocess.decode(..., max_pixels)`)."""

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfsim.data.preprocess import DEFAULT_MAX_PIXELS, decode, encoded_shape

FORMATS = [("PNG", {}), ("JPEG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}), ("WEBP", {"lossless": True})]


def encoded(size, fmt, mode="RGB", **kwargs):
    data = io.BytesIO()
    Image.new(mode, size, 90).save(data, fmt, **kwargs)
    return data.getvalue()


@pytest.mark.parametrize("fmt,kwargs", FORMATS)
@pytest.mark.parametrize("size", [(1, 1), (1000, 3), (3, 1000), (300, 257)])
def test_header_shape_is_the_decoded_shape(fmt, kwargs, size):
    data = encoded(size, fmt, **kwargs)
    want = [size[1], size[0]]
    assert encoded_shape(data).numpy().tolist() == want
    assert decode(data).shape[:2] == tuple(want)
    graph = tf.function(encoded_shape, input_signature=[tf.TensorSpec([], tf.string)])
    assert graph(tf.constant(data)).numpy().tolist() == want  # (inside a serving graph)


def test_other_modes_and_extended_webp():
    for mode in ("L", "RGBA", "P", "CMYK"):
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        assert encoded_shape(encoded((41, 17), fmt, mode)).numpy().tolist() == [17, 41]
    # An animated WebP has the extended (VP8X) header: its canvas size.
    frames = [Image.new("RGB", (45, 21), c) for c in (0, 255)]
    data = io.BytesIO()
    frames[0].save(data, "WEBP", save_all=True, append_images=frames[1:])
    assert data.getvalue()[12:16] == b"VP8X"
    assert encoded_shape(data.getvalue()).numpy().tolist() == [21, 45]
    # A progressive JPEG keeps its size in a later frame header.
    assert encoded_shape(encoded((64, 48), "JPEG", progressive=True)).numpy().tolist() == [48, 64]


def test_bytes_of_no_known_format_are_left_to_the_decoder():
    for data in (b"", b"hello, world", b"\x89PNG", b"GI", b"RIFF1234WEBX"):
        assert encoded_shape(data).numpy().tolist() == [-1, -1], data
    assert encoded_shape(b"BM").numpy().tolist() == [0, 0]  # (a truncated header: its fields read as zeros)
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode(b"hello, world")


@pytest.mark.slow  # (PIL takes seconds to write it)
def test_a_png_that_declares_144_megapixels_is_refused_before_decoding():
    bomb = encoded((12000, 12000), "PNG")  # 0.4 MB of file, 432 MB of pixels
    assert len(bomb) < 500_000
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"12000 x 12000 pixels .* limit of 50000000 pixels"):
        decode(bomb)
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_forged_headers_are_read_as_the_decoder_reads_them():
    """A small real file whose header fields are rewritten to a huge size is refused by its
    declared size (what TF's decoder would allocate), in every fixed-field format."""
    bmp = bytearray(encoded((8, 8), "BMP"))
    bmp[18:26] = struct.pack("<ii", 30000, -30000)  # negative height: a top-down BMP
    png = bytearray(encoded((8, 8), "PNG"))
    png[16:24] = struct.pack(">II", 20000, 20000)
    gif = bytearray(encoded((8, 8), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    for data, shape in ((bmp, [30000, 30000]), (png, [20000, 20000]), (gif, [65535, 65535])):
        assert encoded_shape(bytes(data)).numpy().tolist() == shape
        with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit"):
            decode(bytes(data))


def test_the_limit_is_inclusive_and_can_be_raised_or_lifted():
    data = encoded((100, 50), "PNG")
    assert decode(data, max_pixels=5000).shape == (50, 100, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="100 x 50 pixels .* limit of 4999 pixels"):
        decode(data, max_pixels=4999)
    assert decode(data, max_pixels=0).shape == (50, 100, 3)  # 0: no limit
    np.testing.assert_array_equal(decode(data, max_pixels=5000), tf.io.decode_image(data, channels=3))
