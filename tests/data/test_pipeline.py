"""Input pipeline: sources, class-disjoint splits, model inputs, augmentation."""

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsim.data import pipeline, sources, splits
from tfsim.errors import UserInputError


def test_default_dataset_is_real_balanced_and_attributed():
    ds = sources.load_default()
    assert ds.images.shape == (6000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert np.all(np.bincount(ds.labels) == 600)
    assert ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
    info = json.loads((resources.files("tfsim.data") / "assets" / "fashion_mnist_small.json").read_text())
    assert "Zalando" in info["license"] and "arXiv:1708.07747" in info["citation"]
    assert 0.2 < ds.images.mean() / 255 < 0.4  # real clothing images, not noise or zeros


def test_class_disjoint_split():
    ds = sources.load_default()
    train, test = splits.class_disjoint_split(ds, (2, 4, 5, 6, 7))
    assert set(np.unique(test.labels)) == {2, 4, 5, 6, 7}
    assert not set(np.unique(train.labels)) & set(np.unique(test.labels))
    assert len(train) + len(test) == len(ds)
    _, default_test = splits.class_disjoint_split(ds)
    assert set(np.unique(default_test.labels)) == {5, 6, 7, 8, 9}
    with pytest.raises(UserInputError, match="unknown classes \\[12\\]"):
        splits.class_disjoint_split(ds, (1, 12))


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_folder_source_and_file_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
            (tmp_path / c / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())
    (tmp_path / "notes.txt").write_text("ignored")
    ds = sources.load_folder(str(tmp_path))
    assert ds.class_names == ("cat", "dog") and list(ds.labels) == [0, 0, 0, 1, 1, 1]
    batch = next(iter(pipeline.eval_dataset(ds, 16, batch_size=4)))
    assert batch.shape == (4, 16, 16, 3) and batch.dtype == tf.float32
    x, y = next(iter(pipeline.train_dataset(ds, 2, 2, 16)))
    assert x.shape == (4, 16, 16, 3) and y.numpy().tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    with pytest.raises(UserInputError, match="not a folder"):
        sources.load_folder(str(tmp_path / "missing"))


def test_model_input_grey_to_rgb_and_range():
    ds = sources.load_default().subset(np.arange(8))
    x = next(iter(pipeline.eval_dataset(ds, 28)))
    assert x.shape == (8, 28, 28, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    np.testing.assert_array_equal(x[..., 0].numpy(), ds.images[..., 0].astype(np.float32))


def test_augment_shifts_per_image_deterministically_and_flips_only_when_asked():
    img = np.zeros((64, 16, 16, 3), np.float32)
    img[:, 7:9, 2:4] = 1.0  # a blob left of centre, 2 px wide
    seed = tf.constant([1, 2], tf.int64)
    a = pipeline.augment(tf.constant(img), seed, pad_fraction=0.125).numpy()  # shifts of up to 2 px
    b = pipeline.augment(tf.constant(img), seed, pad_fraction=0.125).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.allclose(a.sum(axis=(1, 2, 3)), img.sum(axis=(1, 2, 3)))  # shifts stay in frame here
    assert len({a[i].tobytes() for i in range(64)}) > 1  # images get different transforms
    # without flips the blob's columns stay within [0, 6)
    cols = lambda x: np.flatnonzero(x.any(axis=(0, 2)))  # noqa: E731
    assert all(cols(a[i]).max() < 6 for i in range(64))
    # with flips about half the images show it mirrored, in columns [10, 16)
    f = pipeline.augment(tf.constant(img), seed, pad_fraction=0.125, flip=True).numpy()
    right = sum(cols(f[i]).min() >= 10 for i in range(64))
    assert right + sum(cols(f[i]).max() < 6 for i in range(64)) == 64
    assert 16 <= right <= 48
    assert np.allclose(f.sum(axis=(1, 2, 3)), img.sum(axis=(1, 2, 3)))


def test_train_dataset_flips_only_with_flip():
    # Images whose left half is bright: a flip makes the right half bright.
    imgs = np.zeros((40, 12, 12, 1), np.uint8)
    imgs[:, :, :6] = 200
    ds = sources.ImageSet(labels=np.repeat(np.arange(4), 10).astype(np.int32),
                          ids=np.array([str(i) for i in range(40)]), class_names=("a", "b", "c", "d"), images=imgs)

    def right_bright(flip):
        x, _ = next(iter(pipeline.train_dataset(ds, 4, 8, 12, seed=0, flip=flip)))
        x = x.numpy()
        return int(np.sum(x[:, :, 8:].mean(axis=(1, 2, 3)) > x[:, :, :4].mean(axis=(1, 2, 3))))

    assert right_bright(False) == 0
    assert 6 <= right_bright(True) <= 26


def test_every_dataset_tfsim_iterates_has_autotuning_off(monkeypatch):
    # TensorFlow 2.20: deleting an autotuned iterator waits out its tuning thread's sleep (seconds at
    # the end of a fit; `pipeline.without_autotune`, bench/iterator_teardown.py). The training batches
    # of every kind, the evaluation batches, `pk_dataset` and the datasets the embedding loop reads
    # (a user's too) are all iterated with autotuning off, and still in parallel.
    from tfsim.data import pk
    from tfsim.evaluation import embed
    imgs = np.zeros((40, 12, 12, 1), np.uint8)
    ds = sources.ImageSet(labels=np.repeat(np.arange(4), 10).astype(np.int32),
                          ids=np.array([str(i) for i in range(40)]), class_names=("a", "b", "c", "d"), images=imgs)
    built = [pipeline.train_dataset(ds, 4, 2, 12, kind=kind, batch_size=12) for kind in ("pk", "random", "epoch",
                                                                                           "triplets")]
    built += [pipeline.eval_dataset(ds, 12), pk.pk_dataset(imgs, ds.labels, classes_per_batch=2, examples_per_class=2),
              pk.pk_dataset(imgs, ds.labels, classes_per_batch=2, examples_per_class=2, image_size=12, augment=True)]
    assert [d.options().autotune.enabled for d in built] == [False] * len(built)
    assert tf.data.Dataset.range(3).options().autotune.enabled is not False  # (TensorFlow's default is on)

    iterated = []
    real = embed.without_autotune
    monkeypatch.setattr(embed, "without_autotune", lambda d: iterated.append(real(d)) or iterated[-1])
    users = tf.data.Dataset.from_tensor_slices(np.zeros((5, 12, 12, 3), np.float32)).batch(2)
    model = lambda x, training=False: tf.reduce_mean(x, axis=(1, 2))  # noqa: E731
    assert embed.embed_dataset(model, users, eager=True).shape == (5, 3)
    assert embed.embed_pairs(model, tf.data.Dataset.zip(users, tf.data.Dataset.range(5).batch(2)),
                             eager=True)[1].tolist() == [0, 1, 2, 3, 4]
    assert [d.options().autotune.enabled for d in iterated] == [False, False]


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_tfds_source_is_streamed_from_encoded_bytes(tmp_path, monkeypatch):
    """TFDS's own mock data through the real loading code (tf_flowers: image + label; cars196's
    mock cannot produce encoded examples: its random boxes fail TFDS's own bbox check)."""
    import tensorflow_datasets as tfds

    decoded = []
    monkeypatch.setattr(np, "stack", lambda *a, **k: decoded.append(1) or np.concatenate([]))  # never called
    with tfds.testing.mock_data(num_examples=20):
        ds = sources.load_tfds("tf_flowers", "train", data_dir=str(tmp_path))
        reference = [(ex["image"], int(ex["label"])) for ex in tfds.load(
            "tf_flowers", split="train", data_dir=str(tmp_path)).as_numpy_iterator()]
    monkeypatch.undo()
    assert ds.images is None and len(ds) == 20 and decoded == []  # file-backed: no decoded copy in memory
    assert ds.class_names == ("dandelion", "daisy", "tulips", "sunflowers", "roses")
    assert ds.paths.tolist() == ds.ids.tolist() and all(p.startswith("/") for p in ds.paths)  # absolute paths
    assert ds.labels.tolist() == [label for _, label in reference]
    for path, (image, _) in zip(ds.paths[:3], reference[:3]):  # the same pixels as TFDS decodes them
        np.testing.assert_array_equal(sources.ImageSet(ds.labels[:1], ds.ids[:1], ds.class_names,
                                                       paths=np.array([path])).load_images([0])[0], image)
    cache = Path(ds.paths[0]).parent
    assert ds.report["cache"] == [str(cache)] and cache.name == "train" and cache.parent.parent.name == "tf_flowers"
    assert str(cache).startswith(str(tmp_path.resolve()))  # under data_dir
    assert len(list(cache.glob("00000*.*"))) == 20 and not list(cache.parent.glob(".tmp-*"))
    # A second load reads the cache (TFDS is not asked for the images again).
    with tfds.testing.mock_data(num_examples=20):
        again = sources.load_tfds("tf_flowers", "train", data_dir=str(tmp_path))
    assert again.paths.tolist() == ds.paths.tolist()
    batch = next(iter(pipeline.train_dataset(ds, 2, 2, 32, augment_images=False)))
    assert batch[0].shape == (4, 32, 32, 3)
    assert set(ds.splits) == {"train"}


def test_tfds_parts_are_cached_and_labelled_apart(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=10):
        both = sources.load_tfds("oxford_flowers102", "train+test", data_dir=str(tmp_path))
        test = sources.load_tfds("oxford_flowers102", "test", data_dir=str(tmp_path))
    assert both.splits.tolist() == ["train"] * 10 + ["test"] * 10
    assert both.paths[10:].tolist() == test.paths.tolist()  # the same cached files
    assert [Path(c).name for c in both.report["cache"]] == ["train", "test"]


def test_tfds_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="Could not prepare TFDS dataset 'no_such_dataset'"):
        sources.load_tfds("no_such_dataset", data_dir=str(tmp_path))


def test_random_erasing_replaces_one_rectangle_by_the_mean():
    img = np.random.default_rng(0).uniform(1, 255, (64, 20, 20, 3)).astype(np.float32)
    seed = tf.constant([3, 4], tf.int64)
    base = pipeline.augment(tf.constant(img), seed, pad_fraction=0.0).numpy()
    erased = pipeline.augment(tf.constant(img), seed, pad_fraction=0.0, erase_prob=0.5).numpy()
    changed = np.any(erased != base, axis=-1)  # [B, S, S]
    hit = changed.any(axis=(1, 2))
    assert 20 <= hit.sum() <= 44  # about half the images
    for i in np.flatnonzero(hit):
        rows, cols = np.flatnonzero(changed[i].any(1)), np.flatnonzero(changed[i].any(0))
        assert changed[i].sum() == rows.size * cols.size  # one solid rectangle
        assert 4 <= rows.size <= 10 and 4 <= cols.size <= 10  # sides 0.2-0.5 of 20 px
        np.testing.assert_allclose(erased[i, rows[0], cols[0]], base[i].mean(axis=(0, 1)), rtol=1e-5)


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_random_resized_crop_batches_are_seeded_resumable_and_differ_from_shifts():
    rng = np.random.default_rng(0)
    images = sources.ImageSet(labels=np.repeat(np.arange(4), 6).astype(np.int32),
                              ids=np.array([str(i) for i in range(24)]), class_names=tuple("abcd"),
                              images=rng.integers(0, 255, (24, 40, 30, 3), dtype=np.uint8))

    def batches(**kw):
        ds = pipeline.train_dataset(images, 2, 3, 16, seed=5, augmentation="random_resized_crop", **kw)
        out = [x.numpy() for x, _ in ds.take(3)]
        assert len(out) == 3, f"the stream ended after {len(out)} batches"
        return np.stack(out)

    first = batches()
    assert first[0].shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(batches(), first)  # seeded
    np.testing.assert_array_equal(batches(start_step=2)[:1], first[2:])  # resumed: the same stream
    shifted = [x.numpy() for x, _ in pipeline.train_dataset(images, 2, 3, 16, seed=5).take(1)]
    assert not np.allclose(shifted[0], first[0])
    plain = [x.numpy() for x, _ in pipeline.train_dataset(images, 2, 3, 16, seed=5, augment_images=False,
                                                          augmentation="random_resized_crop").take(1)]
    unaugmented = [x.numpy() for x, _ in pipeline.train_dataset(images, 2, 3, 16, seed=5,
                                                                augment_images=False).take(1)]
    np.testing.assert_array_equal(plain[0], unaugmented[0])  # no augmentation: no crop either
    with pytest.raises(ValueError, match="`augmentation`: expected 'shift' or 'random_resized_crop'"):
        pipeline.train_dataset(images, 2, 3, 16, augmentation="zoom")


def mixed_folder(root: Path) -> Path:
    """PNG and JPEG files of several sizes, colour and grey, in 3 classes of 4."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(4):
            h, w = [(20, 30), (48, 48), (9, 13), (64, 40)][i]
            grey = i == 2
            pixels = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.{'jpg' if i == 3 else 'png'}")
    return root


def test_decode_once_keeps_the_streamed_pixels_rounded_and_trains_on_the_same_batches(tmp_path):
    folder = sources.load_folder(str(mixed_folder(tmp_path / "imgs")))
    kept, how = pipeline.decode_once(folder, 24, 1 << 20)
    assert how == "12 images decoded once into memory (0.0 MB at 24 px, data.cache_mb=1)"
    assert kept.paths is None and kept.images.shape == (12, 24, 24, 3) and kept.images.dtype == np.uint8
    np.testing.assert_array_equal(kept.labels, folder.labels)
    np.testing.assert_array_equal(kept.ids, folder.ids)
    streamed = np.concatenate([x.numpy() for x in pipeline.eval_dataset(folder, 24)])
    assert np.abs(kept.images - streamed).max() <= 0.5  # the same pixels, rounded to whole levels
    assert np.abs(kept.images - streamed).max() > 0  # (resized: not whole levels before)
    # Training batches, augmented (shift, flip, erasing) per step as before: the same images.
    args = dict(classes_per_batch=3, examples_per_class=2, image_size=24, seed=3, erase_prob=0.5, flip=True)
    for (a, la), (b, lb) in zip(pipeline.train_dataset(kept, **args).take(3),
                                pipeline.train_dataset(folder, **args).take(3)):
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
        assert np.abs(a.numpy() - b.numpy()).max() <= 0.5

    # Over the budget, or a budget of 0: the files, each step; a set in memory stays as it is.
    # (the budget counts the pixels twice: the array and the pipeline's tensor of it)
    assert pipeline.decode_once(folder, 24, 2 * 12 * 24 * 24 * 3)[0].paths is None
    over, how = pipeline.decode_once(folder, 24, 2 * 12 * 24 * 24 * 3 - 1)
    assert over is folder and how == ("12 images decoded from their files at every step (0.0 MB decoded at 24 px, "
                                      "held twice: over data.cache_mb=0)")
    assert pipeline.decode_once(folder, 24, 0)[0] is folder
    default = sources.load_default()
    assert pipeline.decode_once(default, 28, 0) == (default, "6,000 images in memory")


def test_a_file_that_no_longer_decodes_leaves_the_set_on_its_files(tmp_path):
    folder = sources.load_folder(str(mixed_folder(tmp_path / "imgs")))
    Path(folder.paths[5]).write_bytes(b"not an image any more")  # changed after the folder was checked
    same, how = pipeline.decode_once(folder, 24, 1 << 20)
    assert same is folder
    assert how.startswith("12 images decoded from their files at every step (decoding them once failed: ")
