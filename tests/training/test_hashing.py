"""Learning to hash end to end: a tanh head trained with a batch loss, its codes searched by Hamming
distance, the export returning relaxed and packed codes."""

import numpy as np
import pytest
import tensorflow as tf

from tfsim import config
from tfsim.index.hamming import pack_codes
from tfsim.training import train

pytestmark = pytest.mark.slow  # trains a model


@pytest.fixture(scope="module")
def hashed(tmp_path_factory):
    """One trained 32-bit hashing run with its export, index and Hamming retrieval export, shared below."""
    root = tmp_path_factory.mktemp("hashing")
    # (40 steps at 3x the default learning rate: about as far above the untrained network as 80 at the
    # default, 0.19 Hamming mAP; the test below asks 0.12)
    cfg = config.load("default", ["train.epochs=1", "train.steps_per_epoch=40", "train.learning_rate=0.003",
                                  "model.width=16", "model.head=hash", "model.code_bits=32",
                                  "whitening.enabled=false", "eval.every_epoch=false",
                                  "loss.quantization_weight=0.01", f"export.root={root / 'exports'}",
                                  "export.retrieval=hamming"])
    return root / "run", train(cfg, root / "run", verbose=0)


def test_32_bit_codes_retrieve_far_above_the_untrained_network(hashed):
    _, result = hashed
    trained, untrained = result.metrics["hamming"], result.metrics["baselines"]["untrained"]["hamming"]
    assert trained["num_queries"] == 2400
    assert trained["map"] > untrained["map"] + 0.12, (trained, untrained)  # measured: 0.56 vs 0.37
    # The export returns the relaxed codes and the same codes packed, 4 bytes per image.
    serve = tf.saved_model.load(str(result.export_dir)).signatures["serve_images"]
    out = serve(images=tf.constant(np.random.default_rng(0).uniform(0, 255, (5, 28, 28, 3)).astype(np.float32)))
    relaxed, codes = out["embeddings"].numpy(), out["codes"].numpy()
    assert relaxed.shape == (5, 32) and np.abs(relaxed).max() <= 1 and codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, pack_codes(relaxed))


def test_hashing_export_is_indexed_searched_and_evaluated_by_hamming_distance(hashed, tmp_path):
    from tests.images import class_folders
    from tfsim.data import sources
    from tfsim.export import catalogue
    from tfsim.export.embed import embed_export
    from tfsim.index import storage
    from tfsim.index.hamming import hamming_map, hamming_topk
    from tfsim.training.assessment import evaluate
    run_dir, result = hashed
    assert [p.parent.name for p in result.retrieval_dirs] == ["fashion_mnist_small_hamming"]
    inside = storage.load(result.index_dir)  # the export's own index: the held-out codes
    assert inside.params["mode"] == "hamming" and inside.params["code_bits"] == 32
    # Image folders (a few noisy colours) stand in for a catalogue and a data set: what is checked is
    # the search and the evaluation by Hamming distance, which embedding 6,000 images would only slow.
    query = class_folders(tmp_path / "query", ["a", "b", "c"], 4, 0, size=28)
    gallery = class_folders(tmp_path / "gallery", ["a", "b", "c"], 10, 0, size=28)  # same colours, more images
    q_set, g_set = sources.load_folder(str(query)), sources.load_folder(str(gallery))
    relaxed = embed_export(result.export_dir, g_set, progress=False)
    index = storage.load(catalogue.build_index(result.export_dir, str(gallery), tmp_path / "idx", progress=False))
    found = index.search(relaxed[:20], 5)
    rows, dist = hamming_topk(pack_codes(relaxed[:20]), pack_codes(relaxed), 5)
    np.testing.assert_array_equal(found.indices, rows)
    np.testing.assert_array_equal(found.scores, -dist)
    # Database / query protocol: the query folder's images rank the gallery folder's by Hamming distance.
    m = evaluate(result.export_dir, query=str(query), gallery=str(gallery), progress=False)
    want = hamming_map(pack_codes(embed_export(result.export_dir, q_set, progress=False)), q_set.labels,
                       pack_codes(relaxed), g_set.labels, top=100)
    assert m["protocol"] == "query_gallery" and m["hamming"]["num_queries"] == 12
    assert m["hamming"] == pytest.approx(want)
    # One set: each image against all the others (leave-one-out).
    m = evaluate(result.export_dir, data=str(gallery), progress=False)
    assert m["protocol"] == "leave_one_out" and m["hamming"]["num_queries"] == 30
    assert m["hamming"] == pytest.approx(hamming_map(pack_codes(relaxed), g_set.labels, pack_codes(relaxed),
                                                     g_set.labels, top=100, exclude_self=True))
    held_out = evaluate(run_dir, progress=False)  # the run's checkpoint on its held-out classes
    assert held_out["hamming"]["map"] == pytest.approx(result.metrics["hamming"]["map"], abs=1e-6)


def test_a_proxy_loss_trains_the_hash_head(tmp_path):
    """normalized_softmax sees the codes' cosines to the class proxies (not wrapped by HashingLoss)."""
    cfg = config.load("default", ["train.epochs=1", "train.steps_per_epoch=4", "model.width=8", "model.head=hash",
                                  "model.code_bits=16", "whitening.enabled=false", "eval.every_epoch=false",
                                  "eval.baselines=false", "export.enabled=false", "index.enabled=false",
                                  "loss.name=normalized_softmax", "sampler.kind=random", "sampler.batch_size=32"])
    result = train(cfg, tmp_path / "run", verbose=0)
    losses = [float(tf.make_ndarray(v.tensor)) for f in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*")
              for e in tf.compat.v1.train.summary_iterator(str(f)) for v in e.summary.value if v.tag == "train/loss"]
    assert len(losses) == 1 and 0.5 < losses[0] < 20, losses  # (ln 6 ~ 1.8 at the start)
    assert 0 < result.metrics["hamming"]["map"] < 1
    import json
    import zipfile
    with zipfile.ZipFile(tmp_path / "run" / "checkpoints" / "epoch-0001.keras") as z:
        compiled = json.loads(z.read("config.json"))["compile_config"]["loss"]
    assert compiled["class_name"] == "NormalizedSoftmaxLoss", compiled["class_name"]  # not HashingLoss
