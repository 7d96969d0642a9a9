"""The README's "your own images" command on a typical small folder (6 classes x 20 JPEGs).

With half of the classes held out, 3 classes are left to train on: fewer than the default
P = 6. A user who did not set P gets the largest P the training classes allow (one log line
says so); a P the user set is refused with the key and the limit.
"""

import os
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
BUDGET = ["train.epochs=1", "train.steps_per_epoch=2", "model.width=8", "model.embedding_dim=16"]


def jpeg_folder(root: Path, classes=6, per_class=20, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        base = rng.integers(0, 255, 3)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            (root / f"class_{c}" / f"img_{i:02d}.jpg").write_bytes(tf.io.encode_jpeg(img).numpy())
    return root


def train_cli(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [a for s in overrides for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "tfsim.pipelines.train", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)


def test_readme_own_folder_command_on_six_classes(tmp_path):
    photos = jpeg_folder(tmp_path / "photos")
    readme = [s.format(dir=photos) for s in README]
    proc = train_cli(tmp_path, *readme, *BUDGET)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
