"""The stages after training, joined by files: what a re-run reuses and what it redoes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tfsim import config
from tfsim.training import stages, task, train

pytestmark = pytest.mark.slow  # trains models / runs CLIs (see pyproject.toml)

TINY = ["train.epochs=1", "train.steps_per_epoch=3", "model.width=8", "model.embedding_dim=16",
        "eval.every_epoch=false"]


def versions(root):
    return sorted(p.name for p in (root / "fashion_mnist_small").iterdir())


@pytest.fixture
def run(tiny_run):
    """The session's tiny run (tests/conftest.py: TINY here, an export with its index and an exact
    retrieval export): its root, config values and TrainResult."""
    return tiny_run.root, tiny_run.sets, tiny_run.result


def test_index_holds_the_exported_models_embeddings(run):
    from tfsim.export.embed import embed_export
    from tfsim.index import storage
    _, _, result = run
    from tfsim.training.task import load_split
    split = load_split(config.load("default", TINY))
    served = embed_export(result.export_dir, split.test, progress=False)
    index = storage.load(result.index_dir)
    rows, scores = index.search(served[:50], 1)
    # Every held-out image finds itself with similarity 1: the gallery is what the SavedModel computes.
    np.testing.assert_array_equal(rows[:, 0], np.arange(50))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)


def test_raw_pixel_baselines_are_skipped_above_the_memory_cap(run, tmp_path, monkeypatch):
    from tfsim.pipelines.train import format_table
    root, sets, _ = run
    # A copy of the shared run re-entered without its cached baselines: they are computed again
    # (nothing is retrained), under a 1,000-byte cap. Export off: its root is the shared run's.
    run_dir = Path(shutil.copytree(root / "run", tmp_path / "run"))
    (run_dir / "baselines.json").unlink()
    monkeypatch.setattr(stages, "MAX_RAW_PIXEL_BYTES", 1000)
    m = train(config.load("default", sets + ["export.enabled=false", "export.retrieval="]), run_dir, verbose=0).metrics
    assert set(m["baselines"]) == {"untrained"}
    assert set(json.loads((run_dir / "baselines.json").read_text())["baselines"]) == {"untrained"}
    table = format_table(m, (1, 2, 4, 8))
    assert "untrained network" in table and "raw pixels" not in table


def test_cropped_run_exports_the_crop_it_evaluated_with(tmp_path):
    """Random resized crops in training, a centre crop in evaluation, the index and the SavedModel."""
    import tensorflow as tf
    from tfsim.data import pipeline
    sets = TINY + [f"export.root={tmp_path / 'exports'}", "data.augmentation=random_resized_crop",
                   "model.center_crop=0.75", "model.image_size=24", "eval.baselines=false"]
    result = train(config.load("default", sets), tmp_path / "run", verbose=0)
    meta = json.loads((result.export_dir / "assets.extra" / "tfsim" / "export.json").read_text())
    assert meta["center_crop"] == 0.75 and meta["image_size"] == 24
    split = task.load_split(config.load("default", sets))
    sample = split.test.subset(np.arange(4))
    served = tf.saved_model.load(str(result.export_dir)).signatures["serving_default"](
        image_bytes=tf.constant([tf.io.encode_png(im).numpy() for im in sample.load_images(range(4))]))
    cropped = next(iter(pipeline.eval_dataset(sample, 24, center_crop=0.75)))
    direct = tf.saved_model.load(str(result.export_dir)).signatures["serve_images"](images=cropped)
    np.testing.assert_allclose(served["embeddings"].numpy(), direct["embeddings"].numpy(), atol=1e-5)


def test_run_writes_retrieval_savedmodels_once(run):
    import tensorflow as tf

    from tfsim.errors import UserInputError
    root, _, first = run
    assert [str(p.relative_to(root)) for p in first.retrieval_dirs] == ["exports/fashion_mnist_small_exact/1"]
    sample = sorted((root / "run" / "samples").glob("*.png"))[0]
    out = tf.saved_model.load(str(first.retrieval_dirs[0])).signatures["serving_default"](
        image_bytes=tf.constant([sample.read_bytes()]))
    # The sample is a held-out image, so it is in the served gallery: it finds itself first.
    assert out["ids"].shape == (1, 10) and float(out["scores"][0, 0]) > 0.999
    assert "fashion_mnist_small_exact" in (root / "exports" / "models.config").read_text()
    with pytest.raises(UserInputError, match="export.retrieval"):
        config.validate(config.load("default", ["export.retrieval=exact", "index.enabled=false"]))


def test_rerun_reuses_baselines_and_export_until_something_changes(run, tmp_path, monkeypatch):
    root, sets, first = run
    # A copy of the shared run folder, re-entered; the export root is the shared one, where the
    # finished run's export is found again (and the changed one is added as version 2).
    run_dir = Path(shutil.copytree(root / "run", tmp_path / "run"))
    assert versions(root / "exports") == ["1"]

    monkeypatch.setattr(stages, "MAX_RAW_PIXEL_BYTES", 0)  # as in the shared run
    built = []
    original = stages.export_embedder
    monkeypatch.setattr(stages, "export_embedder", lambda *a, **k: built.append(1) or original(*a, **k))
    from tfsim.training import task as task_module
    untrained_builds = []
    build = task_module.build_embedder
    monkeypatch.setattr(task_module, "build_embedder", lambda cfg: untrained_builds.append(1) or build(cfg))

    again = train(config.load("default", sets), run_dir, verbose=0)
    assert built == [] and untrained_builds == []  # nothing trained, baselines from baselines.json
    assert again.export_dir == first.export_dir and versions(root / "exports") == ["1"]
    assert again.retrieval_dirs == first.retrieval_dirs  # the same export: nothing new for TF Serving
    assert again.metrics == first.metrics

    # Another whitening: a different exported function and different (whitened) untrained baseline.
    other = train(config.load("default", sets + ["whitening.power=0"]), run_dir, verbose=0)
    assert built == [1] and untrained_builds == [1]
    assert versions(root / "exports") == ["1", "2"] and other.export_dir.name == "2"
    assert other.metrics["unwhitened"] == first.metrics["unwhitened"]  # same trained network
    meta = json.loads((other.export_dir / "assets.extra" / "tfsim" / "export.json").read_text())
    assert meta["content_hash"] != json.loads(
        (first.export_dir / "assets.extra" / "tfsim" / "export.json").read_text())["content_hash"]
