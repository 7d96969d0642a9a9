"""A TensorFlow op's reason for refusing something, as users see it: without a traced function's context."""

import tensorflow as tf

from tfsim.errors import tf_error_reason

def test_the_reason_without_the_graph_context():
    graph = ("Graph execution error:\n\nDetected at node map/while/decode_image/DecodeImage defined at (most recent "
             "call last):\n<stack traces unavailable>\nInvalid PNG. Failed to initialize decoder.\n\t [[{{node "
             "map/while/decode_image/DecodeImage}}]] [Op:__inference_signature_wrapper_embed_bytes_2161]")
    assert tf_error_reason(Exception(graph)) == "Invalid PNG. Failed to initialize decoder."
    assert tf_error_reason(Exception("{{function_node __wrapped__DecodeImage}} Unknown image file format. "
                                     "One of JPEG, PNG, GIF, BMP required. [Op:DecodeImage]")) == \
        "Unknown image file format. One of JPEG, PNG, GIF, BMP required. [Op:DecodeImage]"
    assert tf_error_reason(Exception("x" * 50), limit=10) == "x" * 10
    assert tf_error_reason(ValueError("")) == "ValueError"

def test_a_real_refusal_inside_a_traced_function():
    decode = tf.function(lambda data: tf.io.decode_image(data, channels=3, expand_animations=False))
    try:
        decode(tf.constant(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40))
    except tf.errors.InvalidArgumentError as err:
        reason = tf_error_reason(err)
    assert "PNG" in reason and "Graph execution" not in reason and "{{" not in reason and "\n" not in reason
    assert len(reason) > 5
