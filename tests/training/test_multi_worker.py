"""train.strategy=multi_worker: 2 worker processes on 127.0.0.1 (TF_CONFIG) train like one process
on the same global batches; only the chief writes; a killed pair resumes from the chief's checkpoint.
The killed pair trains with a cross-batch memory (`loss.memory_size`, which gathers the global
batch as `loss.cross_replica` does): its contents are part of the checkpoints it resumes from
and of those compared; the straight pair without one (the plain loss through the same loop)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from tfsim import config
from tfsim.errors import UserInputError
from tfsim.training import train

pytestmark = pytest.mark.slow  # worker processes

# Frozen BatchNorm: per-replica batch statistics would differ from the global batch's.
SETS = ["train.steps_per_epoch=3", "model.width=8", "model.embedding_dim=16", "sampler.classes_per_batch=4",
        "sampler.examples_per_class=4", "loss.cross_replica=true", "model.freeze_batchnorm=true",
        "eval.baselines=false"]
MEMORY = ["loss.memory_size=40", "loss.memory_warmup_steps=1"]  # the global batch of 16 wraps it at step 3
# The worker records the epochs it trains; with STOP_AFTER_EPOCH=N it stands still once its
# checkpoint of epoch N is written (after touching <root>/stopped-<task index>) until it is killed,
# so a kill lands at a known point whatever the machine's speed.
WORKER = """
import json, os, sys, threading
from pathlib import Path
from tfsim import config
from tfsim.training import train
from tfsim.training.callbacks import ResumableCheckpoint
root, sets = sys.argv[1], json.loads(sys.argv[2])
stop_after, ended, save = int(os.environ.get("STOP_AFTER_EPOCH", 0)), [], ResumableCheckpoint.on_epoch_end
def on_epoch_end(self, epoch, logs=None):
    save(self, epoch, logs)
    ended.append(epoch + 1)
    if epoch + 1 == stop_after:
        Path(root, "stopped-%d" % json.loads(os.environ["TF_CONFIG"])["task"]["index"]).touch()
        threading.Event().wait()
ResumableCheckpoint.on_epoch_end = on_epoch_end
r = train(config.load("default", sets + ["train.strategy=multi_worker", f"run.root={root}/runs",
                                         f"export.root={root}/exports"]), verbose=0)
print("RESULT " + json.dumps({"metrics": {k: v for k, v in r.metrics.items() if isinstance(v, float)},
                              "export": str(r.export_dir) if r.export_dir else None, "epochs": ended}))
"""


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(root, sets, stop_after_epoch=0):
    ports = free_ports(2)
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "STOP_AFTER_EPOCH": str(stop_after_epoch)}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(root), json.dumps(sets)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs):
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.split("RESULT ", 1)[1]) for out, _ in outs]


def assert_same_weights(path, other, atol):
    mine, theirs = (keras.models.load_model(p).weights for p in (path, other))
    assert [w.path for w in mine] == [w.path for w in theirs] and mine
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=atol, err_msg=a.path)


def wait_until_stopped(root, procs, seconds=600):
    """Waits for every worker's stopped-<index> file; fails at once if a worker exits instead."""
    deadline = time.monotonic() + seconds
    while not all((root / f"stopped-{i}").is_file() for i in range(len(procs))):
        assert time.monotonic() < deadline, f"the workers did not reach their stopping point in {seconds} s"
        for p in procs:
            try:
                p.wait(timeout=0.2)  # the pause between looks, and a check that the worker still runs
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"a worker exited ({p.returncode}) before stopping: {p.stderr.read()[-3000:]}")


def test_two_workers_train_like_one_process_only_the_chief_writes_and_a_killed_pair_resumes(tmp_path):
    sets = SETS + ["train.epochs=2"]
    # The killed pair evaluates, whitens and exports nothing: its checkpoints, compared below, do not depend on it.
    killed_sets = SETS + MEMORY + ["train.epochs=2", "eval.every_epoch=false", "whitening.enabled=false",
                                   "export.enabled=false"]
    ckpts = tmp_path / "killed/runs/fashion_mnist_small/checkpoints"
    killed = start_workers(tmp_path / "killed", killed_sets, stop_after_epoch=1)
    try:
        wait_until_stopped(tmp_path / "killed", killed)
    finally:
        for p in killed:
            p.send_signal(signal.SIGKILL)
            p.communicate()
    chief, worker = finish(start_workers(tmp_path / "mw", sets))
    single = train(config.load("default", sets + [f"run.root={tmp_path}/one/runs",
                                                  f"export.root={tmp_path}/one/exports",
                                                  "train.strategy=default"]), verbose=0)

    # The uninterrupted pair trains like one process on the same global batches.
    assert_same_weights(tmp_path / "mw/runs/fashion_mnist_small/checkpoints/epoch-0002.keras",
                        tmp_path / "one/runs/fashion_mnist_small/checkpoints/epoch-0002.keras", atol=1e-4)
    assert chief["metrics"]["recall@1"] == pytest.approx(single.metrics["recall@1"], abs=1e-3)
    assert worker == {"metrics": {}, "export": None, "epochs": [1, 2]} and chief["epochs"] == [1, 2]
    # Only the chief's folders: one run, one export version, no worker folder left behind.
    assert sorted(p.name for p in (tmp_path / "mw" / "runs").iterdir()) == ["fashion_mnist_small"]
    assert sorted(p.name for p in (tmp_path / "mw" / "exports" / "fashion_mnist_small").iterdir()) == ["1"]
    assert (tmp_path / "mw/runs/fashion_mnist_small/metrics.json").is_file()

    # The killed pair, run again, resumes from the chief's checkpoint and ends where one process does.
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch-0001.keras"]  # killed standing at epoch 1's end
    results = finish(start_workers(tmp_path / "killed", killed_sets))
    assert [r["epochs"] for r in results] == [[2], [2]]  # both resumed from epoch 1: only epoch 2 trained
    train(config.load("default", killed_sets + [f"run.root={tmp_path}/one_memory/runs", "train.strategy=default"]),
          verbose=0)
    # (the memory included: 6 steps of 16 into 40 slots, 3 of them restored from the chief's epoch-1 checkpoint)
    assert_same_weights(ckpts / "epoch-0002.keras",
                        tmp_path / "one_memory/runs/fashion_mnist_small/checkpoints/epoch-0002.keras", atol=1e-4)
    memory = keras.models.load_model(ckpts / "epoch-0002.keras").memory
    assert int(memory.steps.numpy()) == 6 and int(memory.next_slot.numpy()) == 6 * 16 % 40
    assert not [p for p in (tmp_path / "killed" / "runs").iterdir() if p.name.startswith(".worker")]


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserInputError, match="needs the TF_CONFIG environment variable"):
        train(config.load("default", SETS + ["train.strategy=multi_worker", f"run.root={tmp_path}"]), verbose=0)
