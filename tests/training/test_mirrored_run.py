"""The whole `train()` pipeline under MirroredStrategy (2 logical CPUs, in a fresh process):
fit, whitening, evaluation, export and index run with 2 replicas."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains models / runs CLIs (see pyproject.toml)

SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfsim import config
from tfsim.training import loop as train_module
from tfsim.training import train
replicas = []
make_strategy = train_module.get_strategy
from tfsim.training import run as train_pipeline
def spy(name):  # the strategy train() actually uses
    strategy = make_strategy(name)
    replicas.append(strategy.num_replicas_in_sync)
    return strategy
train_module.get_strategy = train_pipeline.get_strategy = spy
root = sys.argv[1]
cfg = config.load("default", ["train.epochs=1", "train.steps_per_epoch=3", "model.width=8", "model.embedding_dim=16",
                              "train.strategy=mirrored", f"export.root={root}/exports", f"run.root={root}/runs",
                              "eval.baselines=false"])  # (baselines: single-device code, checked elsewhere)
r = train(cfg, verbose=0)
print(json.dumps({"replicas": replicas,
                  "export": str(r.export_dir), "metrics": r.metrics}))
"""


def test_train_under_mirrored_strategy_exports_a_whitened_model(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == [2]
    m = out["metrics"]
    assert (tmp_path / "runs" / "fashion_mnist_small" / "whitening.npz").is_file()
    export = Path(out["export"])
    assert (export / "saved_model.pb").is_file() and (export / "assets.extra" / "tfsim" / "index").is_dir()
    import keras
    import numpy as np
    import tensorflow as tf
    from tfsim.models.whitening import whiten
    # The export is the trained embedder followed by the saved whitening (unit norm alone
    # would not tell: the plain embedder's outputs are unit vectors too).
    run = tmp_path / "runs" / "fashion_mnist_small"
    images = np.random.default_rng(0).uniform(0, 255, (4, 28, 28, 3)).astype(np.float32)
    served = tf.saved_model.load(str(export))
    emb = served.signatures["serve_images"](images=tf.constant(images))["embeddings"].numpy()
    plain = keras.models.load_model(run / "checkpoints" / "epoch-0001.keras", compile=False).predict(images, verbose=0)
    white = np.load(run / "whitening.npz")
    np.testing.assert_allclose(emb, whiten(plain, white["mean"], white["projection"]), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # The reported metrics are those of the exported model on the held-out images.
    from tfsim.data import pipeline, sources, splits
    from tfsim.evaluation import retrieval_metrics
    _, test = splits.class_disjoint_split(sources.load_default(), (2, 4, 5, 7))
    held_out = np.concatenate([x.numpy() for x in pipeline.eval_dataset(test, 28, 256)])
    served_emb = np.concatenate([served.signatures["serve_images"](images=tf.constant(held_out[i:i + 512]))
                                 ["embeddings"].numpy() for i in range(0, len(held_out), 512)])
    want = retrieval_metrics(served_emb, test.labels, (1, 2, 4, 8), "cosine")
    for key in ("recall@1", "recall@8", "map@r"):
        assert abs(m[key] - want[key]) < 2e-3, (key, m[key], want[key])


SYNC_SCRIPT = """
import json
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tfsim.training.callbacks import SyncReplicaStatistics, sync_replica_statistics
strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(inputs)))
    model.compile("sgd", "mse")
# Replica 0 gets zeros, replica 1 noise around 10: their moving means and variances diverge.
x = np.concatenate([np.zeros((8, 4)), 10 + np.random.default_rng(0).normal(size=(8, 4))]).astype("float32")
model.fit(x, np.zeros((16, 2), "float32"), batch_size=16, epochs=1, verbose=0, shuffle=False)
copies = lambda: [c.numpy().tolist() for c in model.layers[1].moving_mean.value.values]
before = copies()
changed = sync_replica_statistics(model)
after, again = copies(), sync_replica_statistics(model)
# The callback does it at every epoch end, so a fit leaves no divergence behind.
model.fit(x, np.zeros((16, 2), "float32"), batch_size=16, epochs=1, verbose=0, shuffle=False,
          callbacks=[SyncReplicaStatistics()])
print(json.dumps({"before": before, "after": after, "changed": changed, "again": again, "fitted": copies()}))
"""


def test_replica_batchnorm_statistics_are_averaged(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", SYNC_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    first, second = out["before"]
    assert first != second  # Keras 3 leaves each replica its own statistics
    mean = [(a + b) / 2 for a, b in zip(first, second)]
    for copy in out["after"]:
        assert copy == pytest.approx(mean, abs=1e-6)
    assert out["changed"] == 2 and out["again"] == 0  # moving mean and variance; then nothing left to do
    assert out["fitted"][0] == out["fitted"][1]
