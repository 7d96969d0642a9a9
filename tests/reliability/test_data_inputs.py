"""Hostile data inputs: decompression bombs, names that are not UTF-8, list files with empty
labels and duplicate rows, broken symbolic links.

The loader tests call `sources.load_folder` / `lists.load_list` in this process (fast tier);
the command tests run `train`, `index`, `evaluate` and `search` in fresh processes and assert
their exit code, output, reports, peak memory, and that no usable image was lost.

The bomb is a PNG that declares 12,000 x 12,000 black pixels in under 2 MB (written row by row
with zlib, so making it costs this process no memory): 432 MB once decoded to uint8, 1.7 GB as
float32, before any resize.
"""

import dataclasses
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.reliability.helpers import assert_clean_error, cli, tiny_export

BOMB_SIDE = 12_000
DECODED_MB = BOMB_SIDE * BOMB_SIDE * 3 / 2**20  # 412 MiB of uint8 pixels, the least a decode holds


def write_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid RGB PNG of `side` x `side` black pixels, compressed row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(1)
    row = bytes(1 + 3 * side)  # filter byte + RGB
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return write_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


def png(value: int, size: int = 16, noise_seed: int = 0) -> bytes:
    rng = np.random.default_rng(noise_seed)
    img = np.clip(value + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    return tf.io.encode_png(img).numpy()


def write(path, data: bytes):
    """Writes `data` at `path` (str, Path or bytes: bytes paths make names that are not UTF-8)."""
    os.makedirs(os.path.dirname(os.fsencode(path)), exist_ok=True)
    with open(os.fsencode(path), "wb") as f:
        f.write(data)


def hostile_folder(root: Path, bomb: Path, classes=("a", "b", "c", "d"), per_class: int = 6) -> dict:
    """Classes of small PNGs plus every hostile case: the bomb in class a, a file and a class
    folder whose names are not UTF-8 (Latin-1 bytes), a dangling link, a loop of links, a self
    link, a dangling link where a class folder would be, and a working link to an image.
    Returns what a loader should find: {"per_class": {escaped class: images}, "skipped": {name: reason fragment}}.
    """
    raw = os.fsencode(root)
    for k, c in enumerate(classes):
        for i in range(per_class):
            write(root / c / f"{c}_{i}.png", png(40 * k + 20, noise_seed=10 * k + i))
    for i in range(per_class):  # class folder "café" in Latin-1: not UTF-8
        write(raw + b"/caf\xe9/" + b"%d.png" % i, png(230, noise_seed=100 + i))
    write(raw + b"/b/na\xefve.png", png(60, noise_seed=99))  # a file named "naïve.png" in Latin-1
    shutil.copy(bomb, root / "a" / "bomb.png")
    os.symlink(root / "a" / "a_0.png", root / "d" / "link_to_a0.png")  # a link to a real image: kept
    os.symlink("/nonexistent/photo.png", root / "c" / "dangling.png")
    os.symlink("loop_2.png", root / "c" / "loop_1.png")
    os.symlink("loop_1.png", root / "c" / "loop_2.png")
    os.symlink("self.png", root / "d" / "self.png")
    os.symlink(root / "gone", root / "moved_class")  # a class folder that was moved away
    per = {c: per_class for c in classes}
    per["b"] += 1
    per["d"] += 1
    per["caf\\xe9"] = per_class
    return {"per_class": per, "skipped": {
        "bomb.png": "12000 x 12000 = 144.0 megapixels, above data.max_pixels = 50,000,000",
        "dangling.png": "dangling symbolic link: its target '/nonexistent/photo.png' does not exist",
        "loop_1.png": "symbolic link loop", "loop_2.png": "symbolic link loop", "self.png": "symbolic link loop",
        "moved_class": "dangling symbolic link"}}


def assert_report(report: dict, expected: dict, limit_name: str = "data.max_pixels"):
    """Every usable image counted, every hostile file listed with its reason, valid UTF-8 JSON."""
    assert report["images_per_class"] == expected["per_class"]
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(expected["skipped"]), reasons
    for name, fragment in expected["skipped"].items():
        assert fragment.replace("data.max_pixels", limit_name) in reasons[name], (name, reasons[name])
    assert report["names_not_utf8"]["count"] == expected["per_class"]["caf\\xe9"] + 1
    json.dumps(report, ensure_ascii=False).encode("utf-8")  # strict: every name is valid UTF-8


# --- loaders, in this process ------------------------------------------------------------------

@pytest.mark.slow  # over a second: kept out of the fast tier
def test_bomb_is_refused_by_its_header_before_any_decode(tmp_path, bomb, monkeypatch):
    from tfsim import config
    from tfsim.data import lists, pipeline, sources
    from tfsim.errors import UserInputError

    decoded = []  # the sizes of the files the loaders' decoder (`preprocess.decode`, traced once) runs on
    real_decoder = sources._decoder

    def counting_decoder(max_pixels):
        traced = real_decoder(max_pixels)

        def call(data):
            decoded.append(int(tf.strings.length(data)))
            return traced(data)
        call.get_concrete_function = traced.get_concrete_function
        return call

    monkeypatch.setattr(sources, "_decoder", counting_decoder)
    root = tmp_path / "photos"
    for c in ("a", "b"):
        for i in range(3):
            write(root / c / f"{i}.png", png(100 * (c == "b"), noise_seed=i))
    shutil.copy(bomb, root / "a" / "bomb.png")
    images = sources.load_folder(str(root))
    assert len(images) == 6 and bomb.stat().st_size not in decoded and len(decoded) == 6
    [skipped] = images.report["skipped"]
    assert skipped["path"].endswith("/a/bomb.png")
    assert skipped["reason"] == ("12000 x 12000 = 144.0 megapixels, above data.max_pixels = 50,000,000 "
                                 "(50 megapixels): not decoded")
    listing = tmp_path / "l.csv"
    listing.write_text("".join(f"photos/{c}/{i}.png,{c}\n" for c in "ab" for i in range(3)) + "photos/a/bomb.png,a\n")
    listed = lists.load_list(str(listing))
    assert len(listed) == 6 and "144.0 megapixels" in listed.report["skipped"][0]["reason"]
    assert bomb.stat().st_size not in decoded
    monkeypatch.undo()

    # The limit is data.max_pixels: validated, and threaded to the loader and the pipeline's decoder.
    with pytest.raises(UserInputError, match=r"Invalid value for `data.max_pixels`: expected an integer >= 1"):
        config.load("default", ["data.max_pixels=0"])
    assert config.load("default", ["data.max_pixels=5000000"]).data.max_pixels == 5_000_000
    write(root / "b" / "big.png", tf.io.encode_png(np.zeros((1500, 2000, 3), np.uint8)).numpy())  # 3 MP
    small = sources.load_folder(str(root), max_pixels=2_000_000)
    assert "2000 x 1500 = 3.0 megapixels, above data.max_pixels = 2,000,000" in small.report["skipped"][-1]["reason"]
    raised = sources.load_folder(str(root), max_pixels=4_000_000)
    assert len(raised) == 7 and raised.max_pixels == 4_000_000
    assert sum(b.shape[0] for b in pipeline.eval_dataset(raised, 16)) == 7  # decoded with the raised limit
    lowered = dataclasses.replace(raised, max_pixels=2_000_000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit"):  # the decoder's own check
        list(pipeline.eval_dataset(lowered, 16))


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_names_that_are_not_utf8_are_loaded_and_shown_escaped(tmp_path, bomb):
    from tfsim.data import pipeline, sources

    root = tmp_path / "share"
    expected = hostile_folder(root, bomb)
    images = sources.load_folder(str(root))
    assert images.class_names == ("a", "b", "c", "caf\\xe9", "d")
    assert_report(images.report, expected)
    # Ids and class names are valid UTF-8 (JSON, TF strings, TensorBoard); paths are the exact
    # names, which open the files.
    for i, p in zip(images.ids, images.paths):
        i.encode("utf-8")
        assert Path(p).is_file()
    assert str(root / "b" / "na\\xefve.png") in images.ids.tolist()
    assert os.fsencode(root) + b"/b/na\xefve.png" in [os.fsencode(p) for p in images.paths]
    tf.constant(images.ids)
    pixels = np.concatenate([b.numpy() for b in pipeline.eval_dataset(images, 16, batch_size=8)])
    assert pixels.shape[0] == len(images) == 32
    cafe = images.labels == images.class_names.index("caf\\xe9")
    assert pixels[cafe].mean() > 200  # the "café" images themselves were read (value 230)
    assert images.load_images([int(np.flatnonzero(cafe)[0])])[0].shape == (16, 16, 3)


def test_list_rows_without_label_are_skipped_and_duplicates_kept_once(tmp_path):
    from tfsim.data import lists

    for c in ("cat", "dog"):
        for i in range(3):
            write(tmp_path / "img" / f"{c}{i}.png", png(200 * (c == "dog"), noise_seed=i))
    rows = ["path,label"] + [f"img/{c}{i}.png,{c}" for c in ("cat", "dog") for i in range(3)]
    rows += ["img/cat0.png,", "img/dog0.png , ",  # no label
             "img/cat1.png,cat", "./img/cat1.png,cat",  # the same row again (twice)
             "img/dog2.png,cat"]  # the same image under another label: the first row wins
    listing = tmp_path / "pets.csv"
    listing.write_text("\n".join(rows) + "\n")
    images = lists.load_list(str(listing))
    assert images.class_names == ("cat", "dog")  # no class named ""
    assert len(images) == 6 and len(set(images.paths.tolist())) == 6
    assert np.bincount(images.labels).tolist() == [3, 3]
    report = images.report
    assert report["images"] == 6 and report["images_per_class"] == {"cat": 3, "dog": 3}
    assert report["rows_without_label"]["count"] == 2
    assert [p.rsplit("/", 1)[-1] for p in report["rows_without_label"]["examples"]] == ["cat0.png", "dog0.png"]
    dup = report["duplicate_rows"]
    assert dup["count"] == 3 and len(dup["examples"]) == 3
    assert "listed again (label 'cat'; first row: label 'cat'): kept once" in dup["examples"][0]["reason"]
    assert "listed again (label 'cat'; first row: label 'dog')" in dup["examples"][2]["reason"]
    json.dumps(report)


def test_broken_symbolic_links_are_reported(tmp_path):
    from tfsim.data import pipeline, sources

    root = tmp_path / "photos"
    for c in ("a", "b"):
        for i in range(3):
            write(root / c / f"{i}.png", png(100 * (c == "b"), noise_seed=i))
    os.symlink(root / "a" / "0.png", root / "b" / "alias.png")  # works: kept
    os.symlink(root / "b", root / "c")  # a class folder that is a link: kept
    os.symlink("/nowhere/x.png", root / "a" / "dangling.png")
    os.symlink("y.png", root / "a" / "x.png")
    os.symlink("x.png", root / "a" / "y.png")
    os.symlink("me.jpg", root / "a" / "me.jpg")
    os.symlink(root / "missing_folder", root / "d")
    os.symlink("/nowhere/notes.txt", root / "a" / "notes.txt")  # not an image name: ignored as before
    images = sources.load_folder(str(root))
    assert images.report["images_per_class"] == {"a": 3, "b": 4, "c": 4}
    reasons = {s["path"][len(str(root)) + 1:]: s["reason"] for s in images.report["skipped"]}
    assert reasons == {
        "a/dangling.png": "dangling symbolic link: its target '/nowhere/x.png' does not exist",
        "a/x.png": "symbolic link loop (-> 'y.png'): links that lead back to themselves",
        "a/y.png": "symbolic link loop (-> 'x.png'): links that lead back to themselves",
        "a/me.jpg": "symbolic link loop (-> 'me.jpg'): links that lead back to themselves",
        "d": f"dangling symbolic link: its target {str(root / 'missing_folder')!r} does not exist"}
    assert sum(b.shape[0] for b in pipeline.eval_dataset(images, 16)) == 11


# --- commands, in fresh processes --------------------------------------------------------------

@pytest.mark.slow
def test_train_on_a_hostile_folder_skips_and_reports(tmp_path, bomb):
    """Bomb, names that are not UTF-8 and broken links in one training folder: the run trains,
    exports and indexes everything usable, lists the rest with the reason in data_report.json,
    and never decodes the bomb (its peak memory stays far below one decode of it)."""
    root = tmp_path / "share"
    expected = hostile_folder(root, bomb)
    sets = ["data.source=folder", f"data.path={root}", "model.image_size=16", "sampler.classes_per_batch=2",
            "sampler.examples_per_class=3", "train.epochs=1", "train.steps_per_epoch=2", "model.width=4",
            "model.blocks_per_stage=1", "model.embedding_dim=8", "eval.every_epoch=false",
            "whitening.enabled=false", "eval.baselines=false", "run.name=hostile", "export.name=hostile"]
    result = cli("train", *[a for s in sets for a in ("--set", s)], cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    print(f"train peak {result.peak_mb:.0f} MB")
    # The usable images (names that are not UTF-8 included) were decoded once, not at every step.
    assert "Training images: " in result.stderr and " images decoded once into memory (" in result.stderr
    report = json.loads((tmp_path / "runs" / "hostile" / "data_report.json").read_text(encoding="utf-8"))
    assert_report(report, expected)
    assert report["split"]["training_images"] + report["split"]["held_out_images"] == 32
    metrics = json.loads((tmp_path / "runs" / "hostile" / "metrics.json").read_text())
    assert metrics["num_queries"] == report["split"]["held_out_images"]
    assert (tmp_path / "saved_models" / "hostile" / "1" / "saved_model.pb").is_file()
    # Measured about 800 MB on 2 CPU cores; one decode of the bomb adds at least DECODED_MB (412
    # MiB of uint8 pixels, four times that as float32; the issue measured a 5.3 GB peak).
    assert 0 < result.peak_mb < 800 + DECODED_MB * 0.85, result.peak_mb


@pytest.mark.slow
def test_index_evaluate_and_search_skip_or_refuse_the_hostile_files(tmp_path, bomb):
    """`index` and `evaluate` of the hostile folder skip the bomb and the broken links (stderr and
    metrics.json say which and why) and use every other image, names that are not UTF-8
    included; `search --image bomb.png` is refused in one line, before the bomb is decoded."""
    root = tmp_path / "share"
    expected = hostile_folder(root, bomb)
    export = tiny_export(tmp_path / "saved_models", "m")

    index = cli("index", "--model", export, "--data", root, "--out", tmp_path / "idx", cwd=tmp_path)
    assert index.returncode == 0 and "Traceback" not in index.stderr, index.stderr[-3000:]
    assert "(32 images, 5 classes" in index.stdout, index.stdout
    assert "Skipped 6 image file(s) that cannot be used: " in index.stderr
    assert "a/bomb.png (12000 x 12000 = 144.0 megapixels, above data.max_pixels" in index.stderr

    search = cli("search", "--model", export, "--index", tmp_path / "idx", "--image", bomb,
                 "--out", tmp_path / "grid.png", cwd=tmp_path)
    assert_clean_error(search, 2, "Invalid value for `--image`", "12000 x 12000 = 144.0 megapixels",
                       "above the export's max_pixels = 50,000,000", "downscale it")
    assert not (tmp_path / "grid.png").exists()

    evaluate = cli("evaluate", "--model", export, "--data", root, "--out", tmp_path / "eval", cwd=tmp_path)
    assert evaluate.returncode == 0 and "Traceback" not in evaluate.stderr, evaluate.stderr[-3000:]
    assert "skipped 6 image file(s)" in evaluate.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_queries"] == 32 and set(metrics["per_class"]) == set(expected["per_class"])
    assert_report({"images_per_class": expected["per_class"], "skipped": metrics["skipped_files"],
                   "names_not_utf8": {"count": 7}}, expected, limit_name="data.max_pixels")
    print(f"peaks: index {index.peak_mb:.0f} MB, search {search.peak_mb:.0f} MB, evaluate {evaluate.peak_mb:.0f} MB")
    for result in (index, search, evaluate):  # measured about 720 MB each; a decode of the bomb adds
        assert 0 < result.peak_mb < 720 + DECODED_MB * 0.85, result.peak_mb  # >= 412 MiB (search: 4.5 GB before)
