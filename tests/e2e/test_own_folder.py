"""The README's "your own images" command on a typical small folder (6 classes x 20 JPEGs).

With half of the classes held out, 3 classes are left to train on: fewer than the default
P = 6. A user who did not set P gets the largest P the training classes allow (one log line
says so); a P the user set is refused with the key and the limit. The same run shows what a run
says after its last epoch: one line as each stage starts, nothing twice, no TensorFlow chatter;
and the names of the sample images it leaves.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.slow  # runs the train CLI

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
# README: python -m tfsim.pipelines.train --set data.source=folder --set data.path=DIR --set model.image_size=32
README = ["data.source=folder", "data.path={dir}", "model.image_size=32"]
BUDGET = ["train.epochs=2", "train.steps_per_epoch=3", "model.width=8", "model.embedding_dim=16"]


def jpeg_folder(root: Path, classes=6, per_class=20, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        base = rng.integers(0, 255, 3)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            (root / f"class_{c}" / f"img_{i:02d}.jpg").write_bytes(tf.io.encode_jpeg(img).numpy())
    return root


def train_cli(cwd: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [a for s in overrides for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "tfsim.pipelines.train", *args], cwd=cwd, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=900)


def test_readme_own_folder_command_on_six_classes(tmp_path):
    photos = jpeg_folder(tmp_path / "photos")
    readme = [s.format(dir=photos) for s in README]
    proc = train_cli(tmp_path, *readme, *BUDGET, env={"PYTHONWARNINGS": "default"})  # as a user starts it
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_stages_announced_once(proc, tmp_path / "runs" / "photos")
    chose = [line for line in proc.stderr.splitlines() if "Chose sampler." in line]
    assert len(chose) == 1 and chose[0].endswith(
        "Chose sampler.classes_per_batch=3 (P, default 6): the training set has 3 classes. Set these keys to "
        "choose yourself."), proc.stderr[-3000:]
    assert "R@1" in proc.stdout
    run = tmp_path / "runs" / "photos"
    assert '"classes_per_batch": 3' in (run / "config.json").read_text()

    # The same command again: the finished run is recognised (same choice), not refused as another config.
    again = train_cli(tmp_path, *readme, *BUDGET)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "different config" not in again.stderr and "Resuming" not in again.stderr

    # A P the user set is theirs: refused with the limit, in one line, before any work.
    explicit = train_cli(tmp_path, *readme, *BUDGET, "sampler.classes_per_batch=6", "run.name=explicit")
    assert explicit.returncode == 2
    assert explicit.stderr.strip().splitlines()[-1] == (
        "error: Invalid value for `sampler.classes_per_batch`: a P x K batch holds P distinct classes, and the "
        "training set has only 3 classes. Expected 2..3. Received: sampler.classes_per_batch=6")
    assert "Traceback" not in explicit.stderr
    assert not (tmp_path / "runs" / "explicit").exists()


def assert_stages_announced_once(proc, run):
    """Each stage after training says what it starts, in order; the whitening warning once; no
    retracing warning, no absl sharding timing; the epochs as plain lines; samples named once by class."""
    log = proc.stderr
    starts = ["Fitting the whitening on 60 training embeddings...",
              "Computing the baselines (the untrained network, raw pixels) on 60 held-out images...",
              "Evaluating on 60 held-out images...",
              "Exporting the SavedModel to ",
              "Building the ScaNN index of 60 held-out images..."]
    at = [log.find(line) for line in starts]
    assert -1 not in at and at == sorted(at), (at, log[-4000:])
    assert all(log.count(line) == 1 for line in starts)
    assert log.count("Whitening is fitted on 60 images for 16 dimensions") == 1
    assert "retracing" not in log
    assert "Sharding callback" not in log and "Assets written to" not in log
    assert "Exported SavedModel to " in log
    assert "__array__ implementation doesn't accept a copy keyword" not in log  # (checkpoint saves)

    out = proc.stdout
    assert "\x1b" not in out and "\r" not in out
    assert len(re.findall(r"^3/3 - ", out, flags=re.M)) == 2  # one line per epoch
    samples = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert samples and all(re.fullmatch(r"class_\d_img_\d\d\.png", name) for name in samples), samples
