"""Checkpoint/resume: an interrupted run, resumed, ends where an uninterrupted one does."""

from pathlib import Path

import keras
import numpy as np
import pytest

from tfsim import config, runs
from tfsim.errors import UserInputError
from tfsim.training import train
from tfsim.training.callbacks import ResumableCheckpoint

TINY = ["train.epochs=3", "train.steps_per_epoch=2", "model.width=8", "model.blocks_per_stage=1",
        "model.embedding_dim=8", "export.enabled=false", "eval.every_epoch=false",
        "whitening.enabled=false"]  # (refitting on a finished run: tests/training/test_whitening_in_run.py)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    [],  # P x K batches, mining loss, the embedder is the fitted model
    ["loss.name=normalized_softmax", "loss.proxy_lr_multiplier=10", "sampler.kind=random"],  # proxies in the checkpoint
    ["loss.name=triplet_margin", "sampler.kind=triplets"],  # explicit-triplet batches
], ids=["pk", "proxies", "triplets"])
def test_interrupted_run_resumes_to_the_same_model(tmp_path, monkeypatch, extra):
    cfg = config.load("default", TINY + [f"run.root={tmp_path}"] + extra)
    straight = train(cfg, tmp_path / "straight", verbose=0)

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

    a = keras.models.load_model(tmp_path / "straight" / "checkpoints" / "epoch-0003.keras")
    b = keras.models.load_model(tmp_path / "resumed" / "checkpoints" / "epoch-0003.keras")
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["epoch-0002.keras",
                                                                                        "epoch-0003.keras"]
    assert len(a.weights) == len(b.weights) > 0 and a.name == b.name
    if extra and "normalized_softmax" in extra[0]:
        assert a.name == "proxy_trainer" and b.optimizer.lr_multipliers == {"proxies": 10.0}
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), atol=1e-4, err_msg=va.path)
    assert resumed.metrics["recall@1"] == pytest.approx(straight.metrics["recall@1"], abs=2e-3)


@pytest.mark.slow
def test_run_folder_of_another_config_is_refused(tmp_path):
    cfg = config.load("default", TINY + ["train.epochs=1"])
    train(cfg, tmp_path / "run", verbose=0)
    other = config.load("default", TINY + ["train.epochs=1", "loss.margin=0.7"])
    with pytest.raises(UserInputError, match=r"different config \(loss.margin=0.5 there, 0.7 now\)"):
        train(other, tmp_path / "run", verbose=0)
    with pytest.raises(UserInputError, match="already holds a checkpoint"):
        train(cfg, tmp_path / "run", resume=False, verbose=0)

    # A run folder written before a key existed (its config.json lacks it) is the same config
    # at that key's default (the re-run writes the key in), and another one at any other value.
    import json
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    del written["sampler"]["small_classes"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(written))
    assert train(cfg, tmp_path / "run", verbose=0).fit_seconds == 0  # finished: nothing retrained
    with pytest.raises(UserInputError, match=r"sampler.small_classes='replace' there, 'skip' now"):
        train(config.load("default", TINY + ["train.epochs=1", "sampler.small_classes=skip"]), tmp_path / "run",
              verbose=0)


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
def test_run_killed_mid_epoch_resumes_from_its_step_checkpoint(tmp_path, monkeypatch):
    from tfsim.runs import resume_point
    from tfsim.training.callbacks import StepCheckpoint
    sets = ["train.epochs=2", "train.steps_per_epoch=6", "model.width=8", "model.blocks_per_stage=1",
            "model.embedding_dim=8", "export.enabled=false", "eval.every_epoch=false", "whitening.enabled=false",
            "train.checkpoint_every_steps=2"]
    cfg = config.load("default", sets + [f"run.root={tmp_path}"])
    train(cfg, tmp_path / "straight", verbose=0)
    assert sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()) == ["epoch-0001.keras",
                                                                                         "epoch-0002.keras"]

    original = StepCheckpoint.on_train_batch_end

    def killed_at_step_10(self, batch, logs=None):
        original(self, batch, logs)
        if self.step == 10:  # epoch 2, step 4: partial-0001-000004 was just written
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end", killed_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", verbose=0)
    point = resume_point(tmp_path / "resumed" / "checkpoints")
    assert point[0].name == "partial-0001-000004.keras" and point[1:] == (1, 4)
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "epoch-0001.keras", "partial-0001-000004.keras"]
    steps = []
    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end",
                        lambda self, batch, logs=None: steps.append(self.step) or original(self, batch, logs))
    train(cfg, tmp_path / "resumed", verbose=0)
    assert steps == [10, 11]  # only the 2 missing steps were trained (global steps 11 and 12)
    a = keras.models.load_model(tmp_path / "straight" / "checkpoints" / "epoch-0002.keras")
    b = keras.models.load_model(tmp_path / "resumed" / "checkpoints" / "epoch-0002.keras")
    assert int(b.optimizer.iterations.numpy()) == 12
    assert len(a.weights) == len(b.weights) > 0
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), atol=1e-4, err_msg=va.path)
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["epoch-0001.keras",
                                                                                        "epoch-0002.keras"]
