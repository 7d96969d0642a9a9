"""Exports log what tfsim did, not TensorFlow's per-save chatter; real warnings still pass."""

import logging

import pytest

from tfsim.export import saved_model


@pytest.mark.parametrize("logger, level, msg, args, shown", [
    ("absl", logging.INFO, "Sharding callback duration: %s microseconds", (8,), False),
    ("tensorflow", logging.INFO, "Assets written to: %s", ("/x/.tmp-1-ab/assets",), False),
    ("absl", logging.WARNING, "Sharding callback duration: %s microseconds", (8,), True),
    ("absl", logging.WARNING, "Something real: %s", ("x",), True),
    ("tensorflow", logging.WARNING, "5 out of the last 6 calls to %s triggered tf.function retracing.", ("f",), True),
    ("tensorflow", logging.INFO, "Assets written to the moon", (), True),
])
def test_save_chatter_is_dropped_and_nothing_else(caplog, logger, level, msg, args, shown):
    assert saved_model  # (importing it installs the filters)
    with caplog.at_level(logging.INFO, logger=logger):
        logging.getLogger(logger).log(level, msg, *args)
    assert (len(caplog.records) == 1) is shown


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_export_and_checkpoint_log_no_sharding_or_temporary_assets_line(tmp_path, caplog):
    import keras
    import tensorflow as tf
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4),
                              keras.layers.UnitNormalization()])
    with caplog.at_level(logging.INFO):
        final = saved_model.export_embedder(model, tmp_path, "m", 8)
        tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(tmp_path / "ckpt" / "c"))  # (TF logs the sharding here)
    text = caplog.text
    assert "Sharding callback" not in text and "Assets written to" not in text
    assert f"Exported SavedModel to {final}" in text
