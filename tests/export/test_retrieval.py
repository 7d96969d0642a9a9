"""Retrieval SavedModels, loaded in a fresh process as TF Serving would: plain TF for the exact one,
`import scann` first for the ScaNN one; their warm-up records replayed through the signature."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfsim.data import pipeline, sources
from tests.images import class_folders
from tfsim.errors import UserInputError
from tfsim.evaluation import exact_knn
from tfsim.export.embed import embed_export
from tfsim.export import export_embedder
from tfsim.export.retrieval import export_retrieval
from tfsim.export import catalogue
from tfsim.index import storage
from tfsim.models import build_embedding_model

pytestmark = pytest.mark.slow  # fresh TF processes

SERVE = r'''
import json, sys
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
path, use_scann, images = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
if use_scann:
    import scann  # noqa: F401  (registers the Scann ops before loading)
serve = tf.saved_model.load(path).signatures["serving_default"]
out = serve(image_bytes=tf.constant([open(p, "rb").read() for p in images]))
warm = []
for record in tf.data.TFRecordDataset(path + "/assets.extra/tf_serving_warmup_requests"):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    got = tf.saved_model.load(path).signatures[request.model_spec.signature_name](
        **{k: tf.constant(v) for k, v in inputs.items()})
    warm.append([request.model_spec.name, list(got["ids"].shape)])
empty = serve(image_bytes=tf.constant([], tf.string))  # an empty request: empty answers, no error
print(json.dumps({"empty": list(empty["ids"].shape), "ids": out["ids"].numpy().astype(str).tolist(),
                  "match": out["match"].numpy().tolist() if "match" in out else None,
                  "labels": out["labels"].numpy().astype(str).tolist(),
                  "scores": out["scores"].numpy().tolist(), "rows": out["rows"].numpy().tolist(), "warm": warm,
                  "scann_loaded": "scann" in sys.modules}))
'''

# TF Serving as the README runs it (stock, `--model_config_file=ROOT/models.config`): every model
# the config lists, its newest version loaded and asked for one image, with `scann` never importable.
STOCK = r'''
import importlib.abc, json, sys
class NoScann(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "scann" or name.startswith("scann."):
            raise ImportError("stock TF Serving has no ScaNN")
sys.meta_path.insert(0, NoScann())
from pathlib import Path
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
config = text_format.Parse(open(sys.argv[1]).read(), model_server_config_pb2.ModelServerConfig())
image = open(sys.argv[2], "rb").read()
answers = {}
for model in config.model_config_list.config:
    newest = max((v for v in Path(model.base_path).iterdir() if v.name.isdigit()), key=lambda v: int(v.name))
    out = tf.saved_model.load(str(newest)).signatures["serving_default"](image_bytes=tf.constant([image]))
    answers[model.name] = sorted(out)
print(json.dumps({"answers": answers, "scann_loaded": any(m.split(".")[0] == "scann" for m in sys.modules)}))
'''


def stock_serving(config, image):
    """{model name: its outputs} of every model `config` lists, served without ScaNN (see STOCK)."""
    out = subprocess.run([sys.executable, "-c", STOCK, str(config), str(image)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["scann_loaded"]
    return got["answers"]


def listed(config):
    """The model names a TF Serving model config lists."""
    return sorted(line.split('"')[1] for line in Path(config).read_text().splitlines() if "name:" in line)


def serve(path, use_scann, images):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", SERVE, str(path), "1" if use_scann else "0", *map(str, images)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_exact_and_scann_retrieval_exports(tmp_path):
    model = build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=0)
    data = class_folders(tmp_path / "catalogue", ["a", "b", "c", "d"], 30, 0, noise=50)
    # A calibrated export (as the training pipeline writes it): a threshold among the queries' scores.
    keras_emb = model.predict(pipeline.eval_dataset(sources.load_folder(str(data)), 16), verbose=0)
    threshold = float(np.median(exact_knn(keras_emb[[0, 31, 65, 119]], keras_emb, 5, "cosine").scores))
    calibration = {"threshold": threshold, "precision": 0.9, "recall": 0.5, "similarity": "cosine", "k": 5}
    embedder = export_embedder(model, tmp_path / "models", "shop", 16,
                               metadata={"similarity": "cosine", "calibration": calibration})
    index_dir = catalogue.build_index(embedder, str(data), tmp_path / "idx",
                                      {"brute_force_below": 10, "target_recall": 0.9}, progress=False)
    exports = export_retrieval(embedder, index_dir, tmp_path / "models", k=5)
    assert [p.parent.name for p in exports.values()] == ["shop_exact", "shop_scann"]
    # One config per kind of server: stock TF Serving loads and answers with every model of
    # models.config (so no ScaNN model); models_scann.config adds the ScaNN one.
    assert listed(tmp_path / "models" / "models.config") == ["shop", "shop_exact"]
    assert listed(tmp_path / "models" / "models_scann.config") == ["shop", "shop_exact", "shop_scann"]
    assert stock_serving(tmp_path / "models" / "models.config", data / "a" / "a_0.png") == {
        "shop": ["embeddings"], "shop_exact": ["ids", "labels", "match", "rows", "scores"]}
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temporary left

    images = sources.load_folder(str(data))
    ids = catalogue.catalogue_ids(images)  # what the catalogue was indexed with: paths relative to its root
    assert ids[0] == "a/a_0.png"
    queries = [images.paths[i] for i in (0, 31, 65, 119)]
    emb = embed_export(embedder, images, progress=False)
    # The export embeds as the Keras model does (so the served neighbours are the model's).
    np.testing.assert_allclose(emb, model.predict(pipeline.eval_dataset(images, 16), verbose=0), atol=1e-5)
    want = exact_knn(emb[[0, 31, 65, 119]], emb, 5, "cosine")

    exact = serve(exports["exact"], False, queries)
    assert not exact["scann_loaded"]  # stock TF: no ScaNN ops needed
    assert exact["ids"] == ids[want.indices].tolist()
    np.testing.assert_allclose(exact["scores"], want.scores, atol=1e-5)
    assert exact["labels"] == np.asarray(images.class_names)[images.labels[want.indices]].tolist()
    assert exact["warm"] == [["shop_exact", [1, 5]], ["shop_exact", [1, 5]], ["shop_exact", [2, 5]]]
    assert exact["empty"] == [0, 5]
    # The match flag beside each neighbour: its score against the export's calibrated threshold.
    match = np.array(exact["scores"], np.float32) >= np.float32(threshold)
    assert exact["match"] == match.tolist() and 0 < match.sum() < match.size

    ann = serve(exports["scann"], True, queries)
    index = storage.load(index_dir)
    assert index.params["mode"] == "tree_ah"
    # The same searcher with the same tuned settings as the index itself.
    np.testing.assert_array_equal(ann["rows"], index.search(emb[[0, 31, 65, 119]], 5).indices)
    assert [row[0] for row in ann["ids"]] == [ids[i] for i in (0, 31, 65, 119)]  # each finds itself
    assert ann["warm"][-1] == ["shop_scann", [2, 5]] and ann["empty"] == [0, 5]
    assert ann["match"] == (np.array(ann["scores"], np.float32) >= np.float32(threshold)).tolist()
    for path in exports.values():  # the threshold the flag applies, in the retrieval model's metadata
        meta = json.loads((path / "assets.extra" / "tfsim" / "export.json").read_text())
        assert meta["calibration"] == calibration and meta["signatures"]["serving_default"].endswith("rows, match")

    cli = Path(sys.executable).with_name("saved_model_cli")
    for kind, path in exports.items():
        shown = subprocess.run([str(cli), "show", "--dir", str(path), "--all"], capture_output=True, text=True,
                               timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert shown.returncode == 0, shown.stderr[-2000:]
        for word in ("serving_default", "image_bytes", "ids", "labels", "scores", "match", "DT_BOOL", "DT_STRING"):
            assert word in shown.stdout, (kind, word)
        assert "shape: (-1, 5)" in shown.stdout and "unknown_rank" not in shown.stdout.split("serving_default")[-1]
        # Stock TF Serving has every op of the exact export; the ScaNN one needs ScaNN's.
        assert ("Scann>ScannSearchBatched" in shown.stdout) == (kind == "scann")

    other = export_embedder(build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=1),
                            tmp_path / "models", "other", 16)
    with pytest.raises(UserInputError, match="was built by model"):
        export_retrieval(other, index_dir, tmp_path / "models")
    with pytest.raises(UserInputError, match="Invalid retrieval kinds"):
        export_retrieval(embedder, index_dir, tmp_path / "models", kinds=("faiss",))


def test_hamming_retrieval_export_of_a_hashing_model(tmp_path):
    from tfsim.index.hamming import hamming_topk, pack_codes

    model = build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=0, head="hash",
                                  code_bits=24)
    embedder = export_embedder(model, tmp_path / "models", "codes", 16, binary_codes=True)
    data = class_folders(tmp_path / "catalogue", ["a", "b", "c"], 20, 0, noise=50)
    index_dir = catalogue.build_index(embedder, str(data), tmp_path / "idx", progress=False)
    exports = export_retrieval(embedder, index_dir, tmp_path / "models", k=7)  # the kinds that fit: hamming
    assert list(exports) == ["hamming"] and exports["hamming"].parent.name == "codes_hamming"
    assert listed(tmp_path / "models" / "models.config") == ["codes", "codes_hamming"]  # stock TF Serving's
    assert listed(tmp_path / "models" / "models_scann.config") == ["codes", "codes_hamming"]

    images = sources.load_folder(str(data))
    rows_q = [0, 21, 45, 59]
    codes = pack_codes(embed_export(embedder, images, progress=False))  # 3 bytes per image (not a 64-bit word)
    want_rows, want_dist = hamming_topk(codes[rows_q], codes, 7)  # the index's own search, ties by row
    got = serve(exports["hamming"], False, [images.paths[i] for i in rows_q])
    assert not got["scann_loaded"]
    np.testing.assert_array_equal(got["rows"], want_rows)
    np.testing.assert_array_equal(got["scores"], -want_dist)
    assert got["ids"] == catalogue.catalogue_ids(images)[want_rows].tolist()
    assert got["warm"][-1] == ["codes_hamming", [2, 7]] and got["empty"] == [0, 7]
    assert got["match"] is None  # an uncalibrated export: no match flag
    shown = subprocess.run([str(Path(sys.executable).with_name("saved_model_cli")), "show", "--dir",
                            str(exports["hamming"]), "--all"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "shape: (-1, 7)" in shown.stdout and "Scann" not in shown.stdout  # ops stock TF Serving has
    assert len(np.unique(want_dist)) < want_dist.size  # ties were there to break

    with pytest.raises(UserInputError, match="Hamming index of binary codes.*--kinds hamming"):
        export_retrieval(embedder, index_dir, tmp_path / "models", kinds=("exact",))
    plain = export_embedder(build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=0),
                            tmp_path / "models", "plain", 16)
    plain_index = catalogue.build_index(plain, str(data), tmp_path / "plain_idx", progress=False)
    with pytest.raises(UserInputError, match="index of embeddings.*--kinds exact,scann"):
        export_retrieval(plain, plain_index, tmp_path / "models", kinds=("hamming",))
