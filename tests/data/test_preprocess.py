"""The one preprocessing: channels, stretching to S x S, static and dynamic shapes alike."""

import numpy as np
import pytest
import tensorflow as tf

from tfsim.data.preprocess import decode, preprocess, to_uint8


def test_grey_is_repeated_and_non_square_is_stretched():
    img = np.arange(24 * 40, dtype=np.uint8).reshape(24, 40, 1)
    out = preprocess(tf.constant(img), 16).numpy()
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    want = tf.image.resize(tf.constant(img, tf.float32), [16, 16], antialias=True).numpy()[..., 0]
    np.testing.assert_allclose(out[..., 0], want, atol=1e-4)  # stretched, not letterboxed: no padding
    assert out.min() > 0


def test_square_input_of_the_right_size_is_untouched_and_batches_work():
    img = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess(tf.constant(img), 16).numpy(), img.astype(np.float32))
    assert preprocess(tf.constant(img), 8).shape == (2, 8, 8, 3)


def test_dynamic_shapes_give_the_static_result():
    img = np.random.default_rng(1).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    fn = tf.function(lambda x: preprocess(x, 16), input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    np.testing.assert_allclose(fn(tf.constant(img)).numpy(), preprocess(tf.constant(img), 16).numpy(), atol=1e-5)
    square = img[:16, :16]
    np.testing.assert_array_equal(fn(tf.constant(square)).numpy(), square.astype(np.float32))


def test_decode_and_uint8_round_trip():
    img = np.random.default_rng(2).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode(tf.io.encode_png(img)).numpy(), img)
    np.testing.assert_array_equal(to_uint8(preprocess(tf.constant(img), 7)).numpy()[:, :, :],
                                  to_uint8(tf.image.resize(tf.constant(img, tf.float32), [7, 7],
                                                           antialias=True)).numpy())
    assert to_uint8(tf.constant([-3.0, 255.6, 12.4])).numpy().tolist() == [0, 255, 12]


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_crop_box_follows_random_resized_crop_rules():
    from tfsim.data.preprocess import crop_box
    u = np.random.default_rng(0).uniform(size=(400, 4)).astype(np.float32)
    boxes = np.stack([crop_box(300, 400, tf.constant(x)).numpy() for x in u])  # [y0, x0, y1, x1], normalised
    assert boxes.min() >= 0 and boxes.max() <= 1 + 1e-6
    h, w = (boxes[:, 2] - boxes[:, 0]) * 300, (boxes[:, 3] - boxes[:, 1]) * 400
    area, aspect = h * w / (300 * 400), w / h
    whole = (h < 300 - 1e-3) & (w < 400 - 1e-3)  # crops not cut to the image
    assert area.min() >= 0.08 - 1e-4 and area.max() <= 1 + 1e-4
    assert np.all((aspect[whole] >= 3 / 4 - 1e-4) & (aspect[whole] <= 4 / 3 + 1e-4))
    target = 0.08 + u[:, 0] * 0.92  # the drawn area, kept exactly when not cut
    np.testing.assert_allclose(area[whole], target[whole], rtol=1e-4)


def test_random_resized_crop_is_seeded_and_the_full_crop_is_the_image():
    from tfsim.data.preprocess import random_resized_crop
    img = tf.constant(np.random.default_rng(1).integers(0, 255, (20, 20, 3)), tf.uint8)
    seed = tf.constant([1, 2], tf.int64)
    a = random_resized_crop(img, 12, seed).numpy()
    assert a.shape == (12, 12, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 255
    np.testing.assert_array_equal(a, random_resized_crop(img, 12, seed).numpy())
    assert not np.array_equal(a, random_resized_crop(img, 12, tf.constant([1, 3], tf.int64)).numpy())
    full = random_resized_crop(img, 20, seed, scale=(1.0, 1.0), ratio=(1.0, 1.0)).numpy()
    np.testing.assert_allclose(full, img.numpy().astype(np.float32), atol=1e-3)


def test_center_crop_keeps_the_middle():
    img = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    np.testing.assert_array_equal(preprocess(tf.constant(img), 4, center_crop=0.5).numpy(), img[2:6, 2:6])
    np.testing.assert_array_equal(preprocess(tf.constant(img), 8).numpy(), img)


@pytest.mark.slow  # over a second and a half: kept out of the fast tier
def test_unusual_image_files_decode_to_rgb_the_same_way_everywhere(tmp_path):
    """CMYK JPEG, 16-bit PNG, palette PNG, RGBA PNG, grey JPEG and an animated GIF: three RGB
    channels, the same pixels in the pipeline, the pictures and (via `decode`) the SavedModel."""
    import io

    from PIL import Image

    from tfsim.data import pipeline, sources
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)

    def encoded(img, fmt, **kw):
        buffer = io.BytesIO()
        img.save(buffer, fmt, **kw)
        return buffer.getvalue()

    frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(255 - rgb).convert("P")]
    files = {
        "cmyk.jpg": encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "deep.png": tf.io.encode_png(tf.constant(rgb.astype(np.uint16) * 257)).numpy(),
        "palette.png": encoded(Image.fromarray(rgb).convert("P"), "PNG"),
        "alpha.png": encoded(Image.fromarray(np.dstack([rgb, np.full((12, 10), 128, np.uint8)]), "RGBA"), "PNG"),
        "grey.jpg": encoded(Image.fromarray(rgb[..., 0]), "JPEG", quality=95),
        "anim.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    images = sources.ImageSet(labels=np.zeros(len(paths), np.int32), ids=np.array(paths), class_names=("a",),
                              paths=np.array(paths))
    pictures = images.load_images(range(len(paths)))
    fed = [next(iter(pipeline.eval_dataset(images.subset(np.array([i])), 12)))[0].numpy() for i in range(len(paths))]
    for name, picture, batch in zip(files, pictures, fed):
        assert picture.shape == (12, 10, 3) and picture.dtype == np.uint8, name
        np.testing.assert_array_equal(picture, decode(tf.constant(files[name])).numpy())
        want = preprocess(tf.constant(picture), 12).numpy()
        np.testing.assert_allclose(batch, want, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(pictures[1], rgb)  # 16-bit: the high byte
    np.testing.assert_array_equal(pictures[3], rgb)  # alpha dropped
    assert np.abs(pictures[0].astype(int) - rgb).max() <= 12  # CMYK round trip through JPEG
    first_frame = np.asarray(frames[0].convert("RGB"))
    np.testing.assert_array_equal(pictures[2], first_frame)  # palette expanded
    np.testing.assert_array_equal(pictures[5], first_frame)  # an animation's first frame
