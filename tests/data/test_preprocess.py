"""The one preprocessing: channels, stretching to S x S, static and dynamic shapes alike."""

import numpy as np
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
