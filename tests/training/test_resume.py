"""Checkpoint/resume: an interrupted run, resumed, ends where an uninterrupted one does."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from tfsim import config, runs
from tfsim.errors import UserInputError
from tfsim.training import train
from tfsim.training.callbacks import ResumableCheckpoint

TINY = ["train.epochs=3", "train.steps_per_epoch=2", "model.width=8", "model.blocks_per_stage=1",
        "model.embedding_dim=8", "export.enabled=false", "eval.every_epoch=false", "eval.baselines=false",
        "whitening.enabled=false"]  # (refitting on a finished run: tests/training/test_whitening_in_run.py)
VARIANTS = {
    # P x K batches, mining loss, the embedder is the fitted model. 4-step epochs checkpointed every 2
    # steps too: its uninterrupted run is also the reference of the mid-epoch kill below.
    "pk": ["train.steps_per_epoch=4", "train.checkpoint_every_steps=2"],
    # Proxies (and their learning-rate multiplier) in the checkpoint.
    "proxies": ["loss.name=normalized_softmax", "loss.proxy_lr_multiplier=10", "sampler.kind=random"],
    "triplets": ["loss.name=triplet_margin", "sampler.kind=triplets"],  # explicit-triplet batches
}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """`straight(variant)`: `(cfg, run_dir, result)` of the variant's uninterrupted run, trained once
    per module (several tests compare with it). Read-only: a test that changes it works on a copy."""
    done = {}

    def get(variant):
        if variant not in done:
            cfg = config.load("default", TINY + VARIANTS[variant])
            run_dir = tmp_path_factory.mktemp(f"straight_{variant}") / "run"
            done[variant] = cfg, run_dir, train(cfg, run_dir, verbose=0)
        return done[variant]
    return get


def checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights) > 0
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), atol=1e-4, err_msg=va.path)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_interrupted_run_resumes_to_the_same_model(straight, tmp_path, monkeypatch, variant):
    cfg, straight_dir, straight_result = straight(variant)
    original = ResumableCheckpoint.on_epoch_end

    def crash_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(ResumableCheckpoint, "on_epoch_end", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", verbose=0)
    assert runs.latest_checkpoint(tmp_path / "resumed" / "checkpoints")[1] == 1
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(ResumableCheckpoint, "on_epoch_end", original)
    resumed = train(cfg, tmp_path / "resumed", verbose=0)

    a = keras.models.load_model(straight_dir / "checkpoints" / "epoch-0003.keras")
    b = keras.models.load_model(tmp_path / "resumed" / "checkpoints" / "epoch-0003.keras")
    assert checkpoints(tmp_path / "resumed") == ["epoch-0002.keras", "epoch-0003.keras"]
    assert a.name == b.name
    if variant == "proxies":
        assert a.name == "proxy_trainer" and b.optimizer.lr_multipliers == {"proxies": 10.0}
    assert_same_weights(a, b)
    assert resumed.metrics["recall@1"] == pytest.approx(straight_result.metrics["recall@1"], abs=2e-3)


@pytest.mark.slow
def test_run_folder_of_another_config_is_refused(straight, tmp_path):
    cfg, straight_dir, _ = straight("pk")
    run_dir = Path(shutil.copytree(straight_dir, tmp_path / "run"))  # a finished run (its config.json is edited)
    other = config.load("default", TINY + VARIANTS["pk"] + ["loss.margin=0.7"])
    with pytest.raises(UserInputError, match=r"different config \(loss.margin=0.5 there, 0.7 now\)"):
        train(other, run_dir, verbose=0)
    with pytest.raises(UserInputError, match="already holds a checkpoint"):
        train(cfg, run_dir, resume=False, verbose=0)

    # A run folder written before a key existed (its config.json lacks it) is the same config
    # at that key's default (the re-run writes the key in), and another one at any other value.
    written = json.loads((run_dir / "config.json").read_text())
    del written["sampler"]["small_classes"]
    (run_dir / "config.json").write_text(json.dumps(written))
    assert train(cfg, run_dir, verbose=0).fit_seconds == 0  # finished: nothing retrained
    with pytest.raises(UserInputError, match=r"sampler.small_classes='replace' there, 'skip' now"):
        train(config.load("default", TINY + VARIANTS["pk"] + ["sampler.small_classes=skip"]), run_dir, verbose=0)


def test_checkpoint_is_committed_by_one_rename(tmp_path, monkeypatch):
    # A crash while saving epoch 2 leaves epoch 1's checkpoint as the latest, whole; a
    # committed epoch 2 replaces it.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    cb = ResumableCheckpoint(tmp_path / "ck")
    cb.set_model(model)
    cb.on_epoch_end(0)
    assert runs.latest_checkpoint(tmp_path / "ck") == (tmp_path / "ck" / "epoch-0001.keras", 1)

    def crash(self, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(OSError):
        cb.on_epoch_end(1)
    assert runs.latest_checkpoint(tmp_path / "ck") == (tmp_path / "ck" / "epoch-0001.keras", 1)
    keras.models.load_model(tmp_path / "ck" / "epoch-0001.keras")  # intact
    monkeypatch.undo()
    cb.on_epoch_end(1)
    cb.on_epoch_end(2)  # the newest two are kept
    assert [p for p, _ in runs.epoch_checkpoints(tmp_path / "ck")] == [tmp_path / "ck" / "epoch-0002.keras",
                                                                       tmp_path / "ck" / "epoch-0003.keras"]
    assert not list((tmp_path / "ck").glob(".tmp-*"))  # the crashed write's temporary file is gone
    assert runs.latest_checkpoint(tmp_path / "nothing") is None


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_from_its_step_checkpoint(straight, tmp_path, monkeypatch):
    from tfsim.runs import resume_point
    from tfsim.training.callbacks import StepCheckpoint
    cfg, straight_dir, _ = straight("pk")  # 3 epochs of 4 steps, a checkpoint every 2 steps
    assert checkpoints(straight_dir) == ["epoch-0002.keras", "epoch-0003.keras"]  # no partial one left
    original = StepCheckpoint.on_train_batch_end

    def killed_at_step_6(self, batch, logs=None):
        original(self, batch, logs)
        if self.step == 6:  # epoch 2, step 2: partial-0001-000002 was just written
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", verbose=0)
    point = resume_point(tmp_path / "resumed" / "checkpoints")
    assert point[0].name == "partial-0001-000002.keras" and point[1:] == (1, 2)
    assert checkpoints(tmp_path / "resumed") == ["epoch-0001.keras", "partial-0001-000002.keras"]
    steps = []
    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end",
                        lambda self, batch, logs=None: steps.append(self.step) or original(self, batch, logs))
    train(cfg, tmp_path / "resumed", verbose=0)
    assert steps == list(range(6, 12))  # only the 6 missing steps were trained (global steps 7 to 12)
    a = keras.models.load_model(straight_dir / "checkpoints" / "epoch-0003.keras")
    b = keras.models.load_model(tmp_path / "resumed" / "checkpoints" / "epoch-0003.keras")
    assert int(b.optimizer.iterations.numpy()) == 12
    assert_same_weights(a, b)
    assert checkpoints(tmp_path / "resumed") == ["epoch-0002.keras", "epoch-0003.keras"]
