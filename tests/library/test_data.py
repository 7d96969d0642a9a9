"""`tfsim.data.pk_dataset`: every batch is P distinct classes x K rows, rows exactly as given (arrays
of any dtype, several inputs, strings), decoded and resized file paths, a tf.data.Dataset read once,
and the errors."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfsim.data
from tfsim.data import pk
from tfsim.data.preprocess import preprocess

P, K = 3, 4


def source(n_per_class=(6, 7, 5, 8, 6), seed=0):
    """`[N, 2, 3]` float64 rows whose first value is the row's index (so a batch row names its source)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(n_per_class)) * 10 + 3, n_per_class).astype(np.int64)  # labels 3, 13, 23, ...
    x = rng.normal(size=(len(y), 2, 3))
    x[:, 0, 0] = np.arange(len(y))
    return x, y


def check_pk(y_batch, p=P, k=K):
    """Rows [i*K:(i+1)*K] share a class; the P classes are distinct."""
    blocks = np.asarray(y_batch).reshape(p, k)
    assert (blocks == blocks[:, :1]).all(), blocks
    assert len(set(blocks[:, 0].tolist())) == p, blocks


def test_every_batch_is_p_classes_of_k_rows_exactly_as_given():
    x, y = source()
    ds = tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K, seed=0)
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
    seen = set()
    for xb, yb in ds.take(40):
        xb, yb = xb.numpy(), yb.numpy()
        assert xb.dtype == np.float64 and yb.dtype == np.int64 and xb.shape == (P * K, 2, 3)
        check_pk(yb)
        rows = xb[:, 0, 0].astype(int)
        np.testing.assert_array_equal(xb, x[rows])  # bit for bit the source rows
        np.testing.assert_array_equal(yb, y[rows])  # with their own labels
        for block in rows.reshape(P, K):  # K distinct rows of a class that has K
            assert len(set(block.tolist())) == K
        seen |= set(yb.tolist())
    assert seen == set(y.tolist())  # every class drawn
    again = [b[1].numpy().tolist() for b in tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K,
                                                                  seed=0).take(3)]
    other = [b[1].numpy().tolist() for b in tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K,
                                                                  seed=1).take(3)]
    first = [b[1].numpy().tolist() for b in ds.take(3)]
    assert again == first and other != first  # a pure function of (seed, step)


def test_several_inputs_strings_and_small_classes_with_replacement():
    y = np.array([0] * 2 + [1] * 5 + [2] * 5, np.int32)  # class 0 has 2 < K rows: drawn with replacement
    x = {"ids": np.arange(12, dtype=np.int32), "text": np.array([f"row {i}" for i in range(12)])}
    ds = tfsim.data.pk_dataset(x, y, classes_per_batch=3, examples_per_class=K, seed=3)
    for xb, yb in ds.take(10):
        check_pk(yb.numpy(), 3)
        ids = xb["ids"].numpy()
        assert yb.dtype == tf.int32
        np.testing.assert_array_equal(yb.numpy(), y[ids])
        assert [t.decode() for t in xb["text"].numpy()] == [f"row {i}" for i in ids]


def test_a_dataset_of_pairs_is_read_once_batched_or_not():
    x, y = source()
    want = [b[0].numpy() for b in tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K).take(4)]
    for ds in (tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((x, y)).batch(7)):
        got = [b[0].numpy() for b in tfsim.data.pk_dataset(ds, classes_per_batch=P, examples_per_class=K).take(4)]
        np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_small_classes_skip_never_draws_a_class_with_fewer_than_k_rows():
    x, y = source(n_per_class=(6, 3, 5, 2, 6))  # labels 13 (3 rows) and 33 (2 rows) have fewer than K=4
    drawn = set()
    for xb, yb in tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K, seed=2,
                                        small_classes="skip").take(30):
        check_pk(yb.numpy())
        rows = xb.numpy()[:, 0, 0].astype(int)
        assert all(len(set(block)) == K for block in rows.reshape(P, K).tolist())  # never with replacement
        drawn |= set(yb.numpy().tolist())
    assert drawn == {3, 23, 43}
    replaced = {v for _, yb in tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K, seed=2)
                .take(30) for v in yb.numpy().tolist()}
    assert replaced == set(y.tolist())  # (by default they are drawn, with replacement)


def test_start_step_resumes_the_stream_of_the_same_seed():
    x, y = source()
    fresh = [(xb.numpy(), yb.numpy()) for xb, yb in
             tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K, seed=5).take(8)]
    resumed = [(xb.numpy(), yb.numpy()) for xb, yb in
               tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K, seed=5, start_step=5).take(3)]
    for (xa, ya), (xb, yb) in zip(fresh[5:], resumed, strict=True):  # batches 5, 6, 7 of the fresh stream
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(fresh[0][0], resumed[0][0])


def test_a_list_of_arrays_is_several_inputs_as_in_keras():
    x, y = source()
    extra = np.arange(len(y)) * 10
    as_tuple = list(tfsim.data.pk_dataset((x, extra), y, classes_per_batch=P, examples_per_class=K).take(3))
    as_list = list(tfsim.data.pk_dataset([x, extra], y, classes_per_batch=P, examples_per_class=K).take(3))
    for (xt, yt), (xl, yl) in zip(as_tuple, as_list, strict=True):
        assert isinstance(xl, tuple) and len(xl) == 2
        rows = xl[0].numpy()[:, 0, 0].astype(int)
        np.testing.assert_array_equal(xl[1].numpy(), extra[rows])  # the inputs of one row stay together
        np.testing.assert_array_equal(yl.numpy(), y[rows])
        np.testing.assert_array_equal(yl.numpy(), yt.numpy())
        for a, b in zip(xt, xl):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # One array per row (as many as the labels, not of that many rows each) is still rows, stacked.
    xb, yb = next(iter(tfsim.data.pk_dataset(list(x), y, classes_per_batch=P, examples_per_class=K)))
    np.testing.assert_array_equal(xb.numpy(), x[xb.numpy()[:, 0, 0].astype(int)])


def test_a_tuple_of_file_paths_is_paths():
    y = np.repeat([1, 2], 2)
    with pytest.raises(ValueError, match="4 of the 4 image files do not exist"):  # (read as paths, not images)
        tfsim.data.pk_dataset(tuple(f"/nonexistent/{i}.png" for i in range(4)), y, classes_per_batch=2,
                              examples_per_class=2, image_size=8)
    with pytest.raises(ValueError, match="4 of the 4 image files do not exist"):
        tfsim.data.pk_dataset(tuple(Path(f"/nonexistent/{i}.png") for i in range(4)), y, classes_per_batch=2,
                              examples_per_class=2, image_size=8)
    _, yb = next(iter(tfsim.data.pk_dataset(("a", "b", "c", "d"), y, classes_per_batch=2, examples_per_class=2)))
    check_pk(yb.numpy(), 2, 2)  # (strings batched as given without image_size)


def test_a_dataset_of_unknown_size_needs_max_rows_and_stops_reading_past_it():
    x, y = source()
    keep = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: b != 43)  # cardinality unknown
    assert keep.cardinality() == tf.data.UNKNOWN_CARDINALITY
    with pytest.raises(ValueError, match=r"cardinality is unknown.*max_rows=N"):
        tfsim.data.pk_dataset(keep, classes_per_batch=P, examples_per_class=K)
    got = next(iter(tfsim.data.pk_dataset(keep, classes_per_batch=P, examples_per_class=K, max_rows=len(y))))
    want = next(iter(tfsim.data.pk_dataset(x[y != 43], y[y != 43], classes_per_batch=P, examples_per_class=K)))
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    endless = tf.data.Dataset.from_tensor_slices((x, y)).repeat().filter(lambda a, b: b >= 0)
    with pytest.raises(ValueError, match="more than max_rows=100 rows"):
        tfsim.data.pk_dataset(endless, classes_per_batch=P, examples_per_class=K, max_rows=100)
    with pytest.raises(ValueError, match="more than max_rows=20 rows"):  # (a finite dataset is capped too)
        tfsim.data.pk_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(7), classes_per_batch=P,
                              examples_per_class=K, max_rows=20)


@pytest.mark.parametrize("image_size", [None, 4], ids=["arrays", "images"])
def test_arrays_over_2_gb_are_refused_up_front_in_graph_mode_only(monkeypatch, image_size):
    # (TensorFlow's limit, 2 GB per graph, is lowered here to 1 KB: 2 GB arrays would make a slow test.
    # Eagerly, 2 GiB + 64 KiB of uint8 rows trained and checkpointed: see pk.py's module doc.)
    x, y = source()  # 32 rows: 1,536 bytes of float64 (+ 256 of labels)
    if image_size:
        x = np.zeros((len(y), 6, 6), np.uint8)  # 1,152 bytes
    monkeypatch.setattr(pk, "MAX_ARRAY_BYTES", 1024)
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match=r"GiB, and pk_dataset was called in graph mode.*Call pk_dataset eagerly"):
            tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K, image_size=image_size)
    if image_size is None:  # (images take a second more to build)
        _, yb = next(iter(tfsim.data.pk_dataset(x, y, classes_per_batch=P, examples_per_class=K)))
        check_pk(yb.numpy())  # eagerly, no limit


@pytest.mark.slow  # (decoding files: a second or two)
def test_file_paths_are_decoded_and_resized(tmp_path):
    # One file per row, of one colour each (its row index in the red channel), of several sizes.
    paths, y = [], np.repeat([7, 8, 9], 4)
    for i in range(len(y)):
        side = (10, 14, 20)[i % 3]
        image = np.zeros((side, side + 3, 3), np.uint8) + np.array([i * 10, 50, 200], np.uint8)
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(tf.io.encode_png(image).numpy())
    paths = paths[:6] + [str(p) for p in paths[6:]]  # pathlib.Path or str
    ds = tfsim.data.pk_dataset(paths, y, classes_per_batch=2, examples_per_class=3, image_size=8, seed=0)
    for xb, yb in ds.take(5):
        assert xb.shape == (6, 8, 8, 3) and xb.dtype == tf.float32
        check_pk(yb.numpy(), 2, 3)
        rows = np.round(xb.numpy()[:, 0, 0, 0] / 10).astype(int)
        np.testing.assert_array_equal(yb.numpy(), y[rows])  # each file with its own label
        np.testing.assert_allclose(xb.numpy()[:, :, :, 1:], np.broadcast_to([50.0, 200.0], (6, 8, 8, 2)), atol=1e-3)


def test_image_arrays_are_resized_as_the_pipeline_does_or_augmented():
    y = np.repeat([7, 8, 9], 4)
    images = np.random.default_rng(0).integers(0, 255, (12, 10, 10, 1)).astype(np.uint8)
    images[:, 0, 0, 0] = np.arange(12)
    xb, yb = next(iter(tfsim.data.pk_dataset(images, y, classes_per_batch=2, examples_per_class=3, image_size=10)))
    rows = np.round(xb.numpy()[:, 0, 0, 0]).astype(int)
    np.testing.assert_allclose(xb.numpy(), preprocess(images[rows], 10).numpy())
    np.testing.assert_array_equal(yb.numpy(), y[rows])
    augmented = tfsim.data.pk_dataset(images, y, classes_per_batch=2, examples_per_class=3, image_size=10,
                                      augment=True, flip=True, erase_prob=0.5)
    xa, ya = next(iter(augmented))
    assert xa.shape == (6, 10, 10, 3) and xa.dtype == tf.float32
    check_pk(ya.numpy(), 2, 3)


@pytest.mark.parametrize("call,message", [
    (lambda x, y: tfsim.data.pk_dataset(x, y, classes_per_batch=6, examples_per_class=2),
     "only 5 classes"),
    (lambda x, y: tfsim.data.pk_dataset(x, y, classes_per_batch=5, examples_per_class=8),
     "more images than"),
    (lambda x, y: tfsim.data.pk_dataset(x, y, classes_per_batch=2, examples_per_class=1),
     "examples_per_class.*>= 2"),
    (lambda x, y: tfsim.data.pk_dataset(x, y[:-1], classes_per_batch=2, examples_per_class=2),
     "one label per row"),
    (lambda x, y: tfsim.data.pk_dataset(x, y.astype(str), classes_per_batch=2, examples_per_class=2),
     "integer class labels.*np.unique"),
    (lambda x, y: tfsim.data.pk_dataset(x, y, classes_per_batch=2, examples_per_class=2, augment=True),
     "needs `image_size`"),
    (lambda x, y: tfsim.data.pk_dataset(x[:, 0], y, classes_per_batch=2, examples_per_class=2, image_size=8),
     r"images \[N, H, W, C\]"),
    (lambda x, y: tfsim.data.pk_dataset(x, classes_per_batch=2, examples_per_class=2), "expected labels `y`"),
    (lambda x, y: tfsim.data.pk_dataset(tf.data.Dataset.from_tensor_slices((x, y)), y, classes_per_batch=2,
                                        examples_per_class=2), "`y` must be None"),
    (lambda x, y: tfsim.data.pk_dataset(tf.data.Dataset.from_tensor_slices((x, y)).repeat(), classes_per_batch=2,
                                        examples_per_class=2), "infinite"),
    (lambda x, y: tfsim.data.pk_dataset(tf.data.Dataset.from_tensor_slices(x), classes_per_batch=2,
                                        examples_per_class=2), r"\(x, y\) elements"),
    (lambda x, y: tfsim.data.pk_dataset(x, y, classes_per_batch=2, examples_per_class=2, max_rows=10),
     "`max_rows` caps the rows read from a tf.data.Dataset"),
    (lambda x, y: tfsim.data.pk_dataset(tf.data.Dataset.from_tensor_slices((x, y)), classes_per_batch=2,
                                        examples_per_class=2, max_rows=0), "Invalid value for `max_rows`"),
    (lambda x, y: tfsim.data.pk_dataset([Path("a.png")] * len(y), y, classes_per_batch=2, examples_per_class=2),
     "need `image_size`"),
    (lambda x, y: tfsim.data.pk_dataset([Path("/nonexistent/a.png")] * len(y), y, classes_per_batch=2,
                                        examples_per_class=2, image_size=8), "do not exist"),
])
def test_clear_errors(call, message):
    x, y = source()
    with pytest.raises(ValueError, match=message):
        call(x, y)
