"""Export versioning and atomicity."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfsim.errors import UserInputError
from tfsim.export import export_embedder, next_version, read_export
from tfsim.models import build_embedding_model


@pytest.fixture(scope="module")
def model():
    return build_embedding_model("small_resnet", 16, 4, width=4, blocks_per_stage=1, seed=0)


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_versions_increase_and_no_temp_left(tmp_path, model):
    (tmp_path / "m" / "7").mkdir(parents=True)  # an existing version, e.g. written by an older run
    (tmp_path / "m" / "notes").mkdir()
    assert next_version(tmp_path / "m") == 8
    first = export_embedder(model, tmp_path, "m", 16, metadata={"k": 1})
    second = export_embedder(model, tmp_path, "m", 16)
    assert (first.name, second.name) == ("8", "9")
    assert read_export(second)["version"] == 9 and read_export(first)["k"] == 1
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_failed_export_leaves_nothing_visible(tmp_path, model):
    def boom(export_dir):
        assert (export_dir / "saved_model.pb").is_file()  # complete, not yet under its version number
        (export_dir / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export_embedder(model, tmp_path, "m", 16, write_extras=boom)
    assert not (tmp_path / "m").exists()  # (nor the model's folder, which this export created)


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_exported_png_path_equals_pixel_path(tmp_path, model):
    path = export_embedder(model, tmp_path, "m", 16)
    loaded = tf.saved_model.load(str(path))
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    big = np.kron(img, np.ones((2, 2, 1), np.uint8))  # 32x32: resized inside the graph
    by_bytes = loaded.signatures["serving_default"](
        image_bytes=tf.constant([tf.io.encode_png(img).numpy()]))["embeddings"].numpy()
    by_pixels = loaded.signatures["serve_images"](images=tf.constant(img[None], tf.float32))["embeddings"].numpy()
    np.testing.assert_allclose(by_bytes, by_pixels, atol=1e-6)
    np.testing.assert_allclose(by_pixels, model.predict(img[None].astype(np.float32), verbose=0), atol=1e-5)
    resized = loaded.signatures["serving_default"](image_bytes=tf.constant([tf.io.encode_png(big).numpy()]))
    assert resized["embeddings"].shape == (1, 4)
    assert json.loads((path / "assets.extra" / "tfsim" / "export.json").read_text())["image_size"] == 16


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_read_export_errors(tmp_path, model):
    with pytest.raises(UserInputError, match="is not a tfsim export"):
        read_export(tmp_path)
    export_embedder(model, tmp_path, "m", 16)
    with pytest.raises(UserInputError, match="pass .*m/1"):
        read_export(tmp_path / "m")


def one_file_set(tmp_path, img):
    """`img` written as a PNG file, and a one-image file-backed ImageSet of it."""
    from tfsim.data.sources import ImageSet
    png = tmp_path / "0" / "a.png"
    png.parent.mkdir()
    png.write_bytes(tf.io.encode_png(img).numpy())
    return png, ImageSet(labels=np.zeros(1, np.int32), ids=np.array([str(png)]), class_names=("0",),
                         paths=np.array([str(png)]))


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_served_query_reaches_the_network_as_a_training_image_does(tmp_path, model):
    # A non-square grey image file: the training pipeline (file-backed set) and the SavedModel's
    # bytes signature must give the network the same pixels, so the same embedding.
    from tfsim.data import pipeline
    img = np.random.default_rng(3).integers(0, 255, (24, 40, 1), dtype=np.uint8)
    png, files = one_file_set(tmp_path, img)
    fed = next(iter(pipeline.eval_dataset(files, 16))).numpy()
    assert fed.shape == (1, 16, 16, 3)
    path = export_embedder(model, tmp_path / "exports", "m", 16)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        image_bytes=tf.constant([png.read_bytes()]))["embeddings"].numpy()
    np.testing.assert_allclose(served, model.predict(fed, verbose=0), atol=1e-5)


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_served_query_is_centre_cropped_as_evaluation_images_are(tmp_path, model):
    """With model.center_crop (the natural-photo presets' "resize 256, centre crop 224"), the
    SavedModel crops a query as the evaluation pipeline crops a held-out image."""
    from tfsim.data import pipeline
    img = np.random.default_rng(4).integers(0, 255, (30, 44, 3), dtype=np.uint8)
    png, files = one_file_set(tmp_path, img)
    cropped = next(iter(pipeline.eval_dataset(files, 16, center_crop=0.5))).numpy()
    whole = next(iter(pipeline.eval_dataset(files, 16))).numpy()
    np.testing.assert_allclose(cropped[0], tf.image.resize(img.astype(np.float32), [32, 32], antialias=True)
                               .numpy()[8:24, 8:24], atol=1e-4)  # stretched to 16 / 0.5, centre 16 kept
    assert np.abs(cropped - whole).max() > 10
    path = export_embedder(model, tmp_path / "exports", "m", 16, center_crop=0.5)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        image_bytes=tf.constant([png.read_bytes()]))["embeddings"].numpy()
    np.testing.assert_allclose(served, model.predict(cropped, verbose=0), atol=1e-5)
    assert json.loads((path / "assets.extra" / "tfsim" / "export.json").read_text())["center_crop"] == 0.5
