"""The image size read from the header before decoding (`preprocess.encoded_shape`), against PIL's
own reading of real files of every format, and the pixel limit that refuses an image before any
pixel is decoded (`preprocess.decode(..., max_pixels)`)."""

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.preprocess import decode, encoded_shape

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


def gif(frames, size, **kwargs):
    images = [Image.new("RGB", size, (37 * i % 256, 255 - 11 * i % 256, 90)) for i in range(frames)]
    data = io.BytesIO()
    images[0].save(data, "GIF", save_all=frames > 1, append_images=images[1:], **kwargs)
    return data.getvalue()


def naive_gif_frames(data):
    """Frames and their declared areas, walked with a plain Python loop over the GIF's blocks."""
    pos = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    areas = []
    while pos < len(data):
        if data[pos] == 0x2C:
            w, h = struct.unpack("<HH", data[pos + 5:pos + 9])
            areas.append(w * h)
            packed = data[pos + 9]
            pos += 10 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0) + 1
        elif data[pos] == 0x21:
            pos += 2
        else:
            break
        while pos < len(data) and data[pos]:  # the data sub-blocks, up to the terminator
            pos += data[pos] + 1
        pos += 1
    return areas


@pytest.mark.parametrize("frames", [1, 2, 7])
def test_gif_frames_are_counted_block_by_block(frames):
    from tfsim.data.preprocess import encoded_pixels, header_size

    data = gif(frames, (50, 30), duration=20, loop=0, comment=b"x" * 600)
    areas = naive_gif_frames(data)
    assert len(areas) == frames
    shape, got_frames, pixels = encoded_pixels(data)
    assert shape.numpy().tolist() == [30, 50] and int(got_frames) == frames
    assert int(pixels) == sum(max(a, 1500) for a in areas)
    assert header_size(data) == (50, 30, frames, int(pixels))


@pytest.mark.slow  # over a second and a half: kept out of the fast tier
def test_an_animated_gif_is_refused_by_the_pixels_of_all_its_frames():
    """giflib decodes every frame whichever one is kept: 64 frames of 100 x 100 cost 640,000 pixels."""
    data = gif(64, (100, 100))
    assert decode(data, max_pixels=640_000).shape == (100, 100, 3)
    refused = (r"100 x 100 pixels \(width x height\) in 64 frames \(640000 pixels to decode\) "
               r"is above the limit of 639999")
    with pytest.raises(tf.errors.InvalidArgumentError, match=refused):
        decode(data, max_pixels=639_999)


def test_a_gif_frame_larger_than_its_canvas_counts_at_its_own_size():
    """A GIF whose screen says 1 x 1 but whose frame descriptor says 3000 x 2000: the decoder would
    allocate the frame's size, so that is what is counted."""
    data = bytearray(gif(1, (3000, 2000)))
    data[6:10] = struct.pack("<HH", 1, 1)
    assert encoded_shape(bytes(data)).numpy().tolist() == [1, 1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"1 x 1 pixels .* limit of 5999999 pixels"):
        decode(bytes(data), max_pixels=5_999_999)


def test_a_refused_file_is_named():
    from tfsim.data.preprocess import decode_file

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Image \(.*big\.png\) of 100 x 50 pixels"):
        import tempfile
        from pathlib import Path
        path = Path(tempfile.mkdtemp()) / "big.png"
        path.write_bytes(encoded((100, 50), "PNG"))
        decode_file(str(path), max_pixels=100)
