"""Learning to hash end to end: a tanh head trained with a batch loss, its codes searched by Hamming
distance, the export returning relaxed and packed codes."""

import numpy as np
import pytest
import tensorflow as tf

from tfsim import config
from tfsim.index.hamming import pack_codes
from tfsim.training import train

pytestmark = pytest.mark.slow  # trains a model


def test_32_bit_codes_retrieve_far_above_the_untrained_network(tmp_path):
    cfg = config.load("default", ["train.epochs=2", "train.steps_per_epoch=40", "model.width=16", "model.head=hash",
                                  "model.code_bits=32", "whitening.enabled=false", "eval.every_epoch=false",
                                  "loss.quantization_weight=0.1", f"export.root={tmp_path / 'exports'}"])
    result = train(cfg, tmp_path / "run", verbose=0)
    trained, untrained = result.metrics["hamming"], result.metrics["baselines"]["untrained"]["hamming"]
    assert trained["num_queries"] == 2400
    assert trained["map"] > untrained["map"] + 0.08, (trained, untrained)  # measured: 0.53 vs 0.37
    # The export returns the relaxed codes and the same codes packed, 4 bytes per image.
    serve = tf.saved_model.load(str(result.export_dir)).signatures["serve_images"]
    out = serve(images=tf.constant(np.random.default_rng(0).uniform(0, 255, (5, 28, 28, 3)).astype(np.float32)))
    relaxed, codes = out["embeddings"].numpy(), out["codes"].numpy()
    assert relaxed.shape == (5, 32) and np.abs(relaxed).max() <= 1 and codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, pack_codes(relaxed))
