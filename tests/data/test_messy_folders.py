"""Folders as users bring them: bad files skipped and reported (or an error naming them),
hidden files ignored, images found in nested folders, absolute paths."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfsim import config
from tfsim.data import pipeline, sources
from tfsim.errors import UserInputError


def png(rng, size=(12, 12)):
    return tf.io.encode_png(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).numpy()


@pytest.fixture
def messy(tmp_path):
    """4 classes x 6 good images, plus every kind of bad or stray file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c in ("a", "b", "c", "d"):
        for i in range(5):
            (root / c).mkdir(parents=True, exist_ok=True)
            (root / c / f"{i}.png").write_bytes(png(rng))
        (root / c / "images").mkdir()
        (root / c / "images" / "nested.png").write_bytes(png(rng, (20, 8)))  # Tiny ImageNet's layout
    good_jpeg = tf.io.encode_jpeg(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).numpy()
    bad = {
        root / "a" / "empty.jpg": b"",
        root / "b" / "not_an_image.png": b"hello, I am text",
        root / "c" / "truncated.jpg": good_jpeg[:40],
    }
    for path, data in bad.items():
        path.write_bytes(data)
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "b" / "._0.png").write_bytes(b"mac resource fork")
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "x.png").write_bytes(png(rng))
    (root / "README.txt").write_text("not a class")
    (root / "e").mkdir()  # a class folder with no usable image
    (root / "e" / "broken.gif").write_bytes(b"GIF89a")
    return root, {str(p) for p in bad} | {str(root / "e" / "broken.gif")}


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_bad_files_are_skipped_and_reported(messy):
    root, bad = messy
    images = sources.load_folder(str(root))
    assert images.class_names == ("a", "b", "c", "d")
    assert np.bincount(images.labels).tolist() == [6, 6, 6, 6]  # 5 + the nested one each
    assert all(p.startswith(str(root.resolve())) for p in images.paths)
    report = images.report
    assert {s["path"] for s in report["skipped"]} == bad
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["not_an_image.png"].startswith("not a decodable image: ")
    assert "{{" not in reasons["not_an_image.png"]  # (TF's function-node prefix taken off)
    assert report["hidden_ignored"] == 1  # ._0.png (.DS_Store is not an image name; .thumbnails is skipped whole)
    assert report["classes_without_images"] == ["e"]
    assert report["images_per_class"] == {"a": 6, "b": 6, "c": 6, "d": 6}
    # Every kept file goes through the pipeline.
    batches = list(pipeline.eval_dataset(images, 16, batch_size=8))
    assert sum(b.shape[0] for b in batches) == 24


def test_on_bad_file_error_names_the_files(messy):
    root, bad = messy
    with pytest.raises(UserInputError, match=r"4 image file\(s\) in .* cannot be decoded: .*empty.jpg: empty file"):
        sources.load_folder(str(root), on_bad_file="error")


@pytest.mark.slow
def test_a_run_on_a_messy_folder_trains_and_writes_the_report(messy, tmp_path):
    from tfsim.training import train
    root, bad = messy
    cfg = config.load("default", ["data.source=folder", f"data.path={root}", "model.image_size=16",
                                  "sampler.classes_per_batch=2", "sampler.examples_per_class=3",
                                  "train.epochs=1", "train.steps_per_epoch=2", "model.width=4",
                                  "model.embedding_dim=8", "export.enabled=false", "eval.every_epoch=false",
                                  "whitening.enabled=false"])
    result = train(cfg, tmp_path / "run", verbose=0)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert {s["path"] for s in report["skipped"]} == bad
    assert result.metrics["num_queries"] == 12 and result.test_classes == ["c", "d"]
    assert report["split"] == {"training_classes": 2, "training_images": 12, "held_out_classes": 2,
                               "held_out_images": 12, "held_out_classes_with_one_image": [],
                               "training_classes_with_one_image": [],
                               "pk_classes_below_k": {"k": 3, "count": 0, "policy": "replace", "classes": []}}
    with pytest.raises(UserInputError, match=r"`data.on_bad_file`"):
        config.load("default", ["data.source=folder", f"data.path={root}", "data.on_bad_file=maybe"])


@pytest.mark.slow  # over a second and a half: kept out of the fast tier
def test_parallel_decode_check_keeps_the_files_order(tmp_path):
    rng = np.random.default_rng(1)
    files = []
    for i in range(150):  # above the threshold where the check runs on all cores
        f = tmp_path / f"{i:03d}.png"
        f.write_bytes(b"" if i in (17, 140) else (b"text" if i == 70 else png(rng)))
        files.append(f)
    problems = sources.decode_problems(files)
    assert [i for i, p in enumerate(problems) if p] == [17, 70, 140]
    assert problems[17] == "empty file (0 bytes)" and problems[70].startswith("not a decodable image")
    assert problems == [sources._decode_problem(f) for f in files]  # the same answers as one by one
