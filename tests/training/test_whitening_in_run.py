"""Whitening inside a run: fitted on the training classes only, what is evaluated, and
whitening.enabled=auto's choice (on folds of the training classes, or on the validation classes
train.select_best holds out; never the test classes)."""

import shutil
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from tfsim import config
from tfsim.data import sources, splits
from tfsim.evaluation.embed import embed
from tfsim.evaluation.metrics import retrieval_metrics
from tfsim.models.whitening import fit_whitening, whiten
from tfsim.training import train

pytestmark = pytest.mark.slow  # trains models / runs CLIs (see pyproject.toml)

TINY = ["train.epochs=1", "train.steps_per_epoch=5", "model.width=8", "model.blocks_per_stage=1",
        "model.embedding_dim=16", "export.enabled=false", "eval.every_epoch=false"]


WHITENED = TINY + ["whitening.enabled=true", "whitening.dims=12"]
REFITTED = WHITENED + ["whitening.power=0", "whitening.max_images=500"]  # the shared run re-entered (`refitted`)


@pytest.fixture(scope="module")
def whitened_run(tmp_path_factory):
    """One trained run with a 12-dim whitening. A test that changes the whitening re-enters a copy
    (whitening settings apply after training, so the copy is not retrained)."""
    run_dir = tmp_path_factory.mktemp("whitening") / "run"
    return run_dir, train(config.load("default", WHITENED), run_dir, verbose=0)


def copy_of(run_dir, tmp_path):
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


@pytest.fixture(scope="module")
def default_split():
    return splits.class_disjoint_split(sources.load_default(), config.load("default").data.test_classes)


def test_whitening_is_fitted_on_training_images_and_evaluated(whitened_run, default_split):
    cfg = config.load("default", WHITENED)
    run_dir, result = whitened_run
    train_set, test_set = default_split
    saved = dict(np.load(run_dir / "whitening.npz"))
    embedder = keras.models.load_model(run_dir / "checkpoints" / "epoch-0001.keras")
    # Refit from the checkpoint's embeddings of the 3,600 training images (never held-out ones).
    mean, projection = fit_whitening(embed(embedder, train_set, 28), power=0.5, dims=12)
    np.testing.assert_allclose(saved["mean"], mean, atol=1e-5)
    np.testing.assert_allclose(saved["projection"], projection, rtol=1e-3, atol=1e-4)
    # The reported metrics are those of the whitened test embeddings; `unwhitened` of the plain ones.
    test = embed(embedder, test_set, 28)
    m = result.metrics
    assert m["recall@1"] == pytest.approx(
        retrieval_metrics(whiten(test, mean, projection), test_set.labels, (1,), "cosine")["recall@1"], abs=2e-3)
    assert m["unwhitened"]["recall@1"] == pytest.approx(
        retrieval_metrics(test, test_set.labels, (1,), "cosine")["recall@1"], abs=1e-6)
    assert set(m["baselines"]) == {"raw_pixels", "untrained", "raw_pixels_whitened"}
    # Re-entering the finished run (resume with no epoch left) refits the same whitening.
    again = train(cfg, run_dir, verbose=0)
    np.testing.assert_allclose(np.load(run_dir / "whitening.npz")["projection"], saved["projection"],
                               atol=1e-6)
    assert again.metrics["recall@1"] == pytest.approx(m["recall@1"], abs=1e-6)
    assert again.metrics["map@r"] == pytest.approx(m["map@r"], abs=1e-6)


def test_whitening_off_evaluates_the_plain_embedder(whitened_run, tmp_path):
    # The shared run re-entered with the whitening off (it applies after training: nothing is retrained).
    first = whitened_run[1]
    run_dir = copy_of(whitened_run[0], tmp_path)
    (run_dir / "whitening.npz").unlink()
    result = train(config.load("default", TINY + ["whitening.enabled=false"]), run_dir, verbose=0)
    assert not (run_dir / "whitening.npz").exists()
    assert "unwhitened" not in result.metrics and "raw_pixels_whitened" not in result.metrics["baselines"]
    assert set(result.metrics["baselines"]) == {"raw_pixels", "untrained"}  # recomputed, not the cached ones
    assert result.metrics["recall@1"] == pytest.approx(first.metrics["unwhitened"]["recall@1"], abs=1e-6)
    assert result.metrics["map@r"] == pytest.approx(first.metrics["unwhitened"]["map@r"], abs=1e-6)


@pytest.fixture(scope="module")
def refitted(whitened_run, tmp_path_factory):
    """A copy of the shared run re-entered with another whitening (power 0, fitted on at most 500
    images): `.run_dir`, `.result`, `.fitted` (the arrays `fit_whitening` was given: the trained
    model's, the untrained baseline's, the raw pixels') and `.checkpoint_mtime` (before the re-entry)."""
    from tfsim.training import stages
    run_dir = copy_of(whitened_run[0], tmp_path_factory.mktemp("refitted"))
    checkpoint_mtime = (run_dir / "checkpoints" / "epoch-0001.keras").stat().st_mtime_ns
    fitted = []
    original = stages.fit_whitening
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "fit_whitening", lambda x, *a, **k: fitted.append(np.asarray(x)) or original(x, *a, **k))
        result = train(config.load("default", REFITTED), run_dir, verbose=0)
    return types.SimpleNamespace(run_dir=run_dir, result=result, fitted=fitted, checkpoint_mtime=checkpoint_mtime)


def test_refit_whitening_on_a_finished_run_without_retraining(whitened_run, refitted):
    """Post-training sections may change when a finished run is re-entered: the checkpoint is
    reused (no training step) and only the whitening is refitted with the new settings."""
    run_dir, first = refitted.run_dir, whitened_run[1]
    assert (run_dir / "checkpoints" / "epoch-0001.keras").stat().st_mtime_ns == refitted.checkpoint_mtime
    assert refitted.result.fit_seconds == 0  # not retrained
    assert refitted.result.metrics["unwhitened"] == first.metrics["unwhitened"]
    projection = np.load(run_dir / "whitening.npz")["projection"]
    np.testing.assert_allclose(projection.T @ projection, np.eye(12), atol=1e-4)  # power 0: a rotation


def test_collapsed_embeddings_are_a_clear_user_error():
    from tfsim.errors import UserInputError
    from tfsim.training.stages import _fit_or_explain
    with pytest.raises(UserInputError, match="collapse.*whitening.enabled=false"):
        _fit_or_explain(np.ones((100, 4), np.float32), config.WhiteningConfig())


def test_large_training_sets_fit_on_a_seeded_subset(refitted, default_split):
    # Whatever rows the implementation draws: the whitening is fitted on exactly 500 embeddings,
    # each the embedding of a distinct training image; the same seed draws the same rows, and
    # another seed other rows. (The shared run re-entered with whitening.max_images=500: refitted,
    # and its baselines recomputed, not retrained.)
    from tfsim.training import stages
    run_dir, fitted, cfg = refitted.run_dir, refitted.fitted, config.load("default", REFITTED)
    train_set, _ = default_split
    embedder = keras.models.load_model(run_dir / "checkpoints" / "epoch-0001.keras")
    full = embed(embedder, train_set, 28)
    # Fits of this run: the trained model's, the untrained baseline's, the raw pixels'.
    assert sorted(f.shape for f in fitted) == [(500, 16), (500, 16), (500, 2352)]
    matches = [f for f in fitted if f.shape == (500, 16)
               and ((f[:, None, :] - full[None, :, :]) ** 2).sum(-1).min(1).max() < 1e-8]
    assert len(matches) == 1  # the trained model's: every row a training image's embedding
    trained_fit = matches[0]
    rows = ((trained_fit[:, None, :] - full[None, :, :]) ** 2).sum(-1).argmin(1)
    assert len(set(rows.tolist())) == 500
    saved = np.load(run_dir / "whitening.npz")["mean"]
    np.testing.assert_allclose(saved, trained_fit.mean(0), atol=1e-5)
    assert np.abs(saved - full.mean(0)).max() > 1e-4  # a subset, not all 3,600 images
    subset = stages.whitening_fit_set(cfg, train_set)
    assert subset.ids.tolist() == stages.whitening_fit_set(cfg, train_set).ids.tolist()
    assert sorted(subset.ids.tolist()) == sorted(train_set.ids[rows].tolist())
    other = stages.whitening_fit_set(config.load("default", TINY + ["whitening.max_images=500", "train.seed=1"]),
                                     train_set)
    assert set(other.ids.tolist()) != set(subset.ids.tolist())


def test_auto_whitening_chooses_on_folds_of_the_training_classes(whitened_run, default_split, tmp_path):
    """The shared run re-entered with whitening.enabled=auto: each candidate's fold scores are
    recomputed here from the checkpoint's embeddings of the training images only (3 folds of the
    6 training classes in the documented seeded order), the choice follows the margin rule, and
    the whitening written is the chosen power refitted on every training image."""
    from tfsim.evaluation import selection
    run_dir = copy_of(whitened_run[0], tmp_path)
    result = train(config.load("default", TINY + ["whitening.dims=12"]), run_dir, verbose=0)
    choice = result.metrics["whitening"]
    assert choice["test_classes_used"] is False and choice["metric"] == "recall@1"
    assert set(choice["scores"]) == {"off", "0.25", "0.5"} and all(len(v) == 3 for v in choice["scores"].values())
    train_set, _ = default_split
    embedder = keras.models.load_model(run_dir / "checkpoints" / "epoch-0001.keras")
    features = embed(embedder, train_set, 28)
    order = np.random.default_rng(0).permutation(np.unique(train_set.labels))
    for f in range(3):
        val = np.isin(train_set.labels, order[f::3])
        off = retrieval_metrics(features[val], train_set.labels[val], (1,), "cosine")["recall@1"]
        half = retrieval_metrics(whiten(features[val], *fit_whitening(features[~val], 0.5, 12)),
                                 train_set.labels[val], (1,), "cosine")["recall@1"]
        assert choice["scores"]["off"][f] == pytest.approx(off, abs=1e-6)
        assert choice["scores"]["0.5"][f] == pytest.approx(half, abs=2e-3)
    assert choice["chosen"] == selection.choose(choice["scores"], "0.5", 0.005)[0]  # the margin rule applied
    if choice["chosen"] == "off":
        assert not (run_dir / "whitening.npz").exists() and "unwhitened" not in result.metrics
    else:
        _, projection = fit_whitening(features, float(choice["chosen"]), 12)
        np.testing.assert_allclose(np.load(run_dir / "whitening.npz")["projection"], projection, rtol=1e-3,
                                   atol=1e-4)


def test_auto_whitening_that_chooses_none_evaluates_and_keeps_the_plain_embedder(whitened_run, tmp_path,
                                                                                   monkeypatch, capsys):
    from tfsim.evaluation import selection
    from tfsim.pipelines import train as train_cli
    run_dir = copy_of(whitened_run[0], tmp_path)
    monkeypatch.setattr(selection, "choose", lambda scores, default, margin: ("off", {k: 0.5 for k in scores}))
    result = train(config.load("default", TINY + ["whitening.dims=12"]), run_dir, verbose=0)
    assert not (run_dir / "whitening.npz").exists()  # the earlier run's whitening no longer applies
    assert "unwhitened" not in result.metrics and "raw_pixels_whitened" not in result.metrics["baselines"]
    assert result.metrics["recall@1"] == pytest.approx(whitened_run[1].metrics["unwhitened"]["recall@1"], abs=1e-6)
    line = train_cli.format_whitening(result.metrics["whitening"])
    assert line.startswith("whitening: none (whitening.enabled=auto; mean recall@1 off 0.5000")
    assert line.endswith("the held-out classes played no part)")


def test_auto_whitening_on_validation_classes_and_with_too_few_classes(whitened_run, default_split):
    """The stage itself (the run's wiring: tests/library/test_calibration.py's select_best run):
    given validation classes, one fold scored on them, each candidate fitted on the other
    classes; with 3 training classes, the preset's power without looking at the embeddings."""
    from tfsim.training import stages
    cfg = config.load("default", TINY + ["whitening.dims=12"])
    embedder = keras.models.load_model(whitened_run[0] / "checkpoints" / "epoch-0001.keras")
    train_set, _ = default_split
    chosen_cfg, choice, features = stages.choose_whitening(cfg, embedder, train_set, np.array([3, 8]))
    assert choice["on"].startswith("the 2 validation classes train.select_best held out of training")
    assert all(len(v) == 1 for v in choice["scores"].values())
    val = np.isin(train_set.labels, [3, 8])
    off = retrieval_metrics(features[val], train_set.labels[val], (1,), "cosine")["recall@1"]
    assert choice["scores"]["off"] == [pytest.approx(off, abs=1e-6)]
    quarter = retrieval_metrics(whiten(features[val], *fit_whitening(features[~val], 0.25, 12)),
                                train_set.labels[val], (1,), "cosine")["recall@1"]
    assert choice["scores"]["0.25"] == [pytest.approx(quarter, abs=2e-3)]
    assert chosen_cfg.whitening.enabled is (choice["chosen"] != "off")
    three = train_set.subset(np.flatnonzero(np.isin(train_set.labels, [0, 1, 3])))
    kept, few, none = stages.choose_whitening(cfg, None, three)  # (no embedder needed: nothing is embedded)
    assert few["chosen"] == "0.5" and "scores" not in few and none is None
    assert "3 training classes are too few to choose on" in few["reason"]
    assert kept.whitening.enabled is True and kept.whitening.power == 0.5
