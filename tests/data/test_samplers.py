"""Sampler invariants: P x K, random and explicit-triplet batches."""

import numpy as np
import pytest

from tfsim.data.samplers import epoch_batches, pk_batches, random_batches, triplet_batches
from tfsim.errors import UserInputError


def labels_of(n_classes=7, per_class=(5, 9, 12, 6, 20, 8, 5)):
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in zip(range(n_classes), per_class)])
    return rng.permutation(labels) * 3 + 1  # arbitrary label values, shuffled rows


def take(ds, n):
    """The first `n` batches, stacked `[n, batch]`; a stream that ends early fails (samplers never end)."""
    batches = [b.numpy() for b in ds.take(n)]
    assert len(batches) == n, f"the stream ended after {len(batches)} of {n} batches"
    return np.stack(batches)


def test_every_batch_has_p_classes_times_k_images_label_contiguous():
    labels = labels_of()
    p, k = 4, 3
    for rows in take(pk_batches(labels, p, k, seed=1), 30):
        assert rows.shape == (p * k,)
        assert len(set(rows.tolist())) == p * k  # no image twice (every class has >= K images)
        blocks = labels[rows].reshape(p, k)
        assert np.all(blocks == blocks[:, :1])  # each block of K is one class
        assert len(set(blocks[:, 0].tolist())) == p  # P distinct classes


def test_same_seed_same_batches_different_seed_or_epoch_differs():
    labels = labels_of()
    a = take(pk_batches(labels, 3, 4, seed=5), 20)
    b = take(pk_batches(labels, 3, 4, seed=5), 20)
    c = take(pk_batches(labels, 3, 4, seed=6), 20)
    np.testing.assert_array_equal(a, b)
    assert a.shape == c.shape and not np.array_equal(a, c)
    epoch1, epoch2 = a[:10], a[10:]  # an "epoch" of 10 steps vs the next
    assert epoch1.shape == epoch2.shape and not np.array_equal(epoch1, epoch2)


def test_resume_from_step_replays_the_same_stream():
    labels = labels_of()
    full = take(pk_batches(labels, 3, 4, seed=2), 12)
    resumed = take(pk_batches(labels, 3, 4, seed=2, start_step=7), 5)
    np.testing.assert_array_equal(resumed, full[7:])


def test_all_classes_and_images_get_visited():
    labels = labels_of()
    seen = np.concatenate(take(pk_batches(labels, 4, 2, seed=0), 400))
    assert set(labels[seen].tolist()) == set(labels.tolist())
    assert len(set(seen.tolist())) == len(labels)


def test_small_class_sampled_with_replacement():
    labels = np.array([0] * 2 + [1] * 10 + [2] * 10)
    for rows in take(pk_batches(labels, 3, 4, seed=0), 10):
        assert np.all(labels[rows].reshape(3, 4) == labels[rows].reshape(3, 4)[:, :1])


@pytest.mark.parametrize("p,k,match", [
    (2, 1, "examples_per_class`: expected an integer >= 2"),
    (1, 2, "classes_per_batch`: expected an integer >= 2"),
    (8, 2, r"`classes_per_batch`: a P x K batch holds P distinct classes, and the training set has only 7 "
           r"classes. Expected 2..7. Received: classes_per_batch=8"),
    (3, 30, r"\(3 classes x 30 images = 90 images\) holds more images than the training set \(65\). Lower "
            r"`examples_per_class` to at most 21"),
])
def test_bad_batch_shapes_are_clear_errors(p, k, match):
    with pytest.raises(UserInputError, match=match):
        pk_batches(labels_of(), p, k)


def test_random_batches_are_distinct_rows_reproducible_and_fresh():
    a = take(random_batches(50, 20, seed=3), 5)
    assert all(r.shape == (20,) and len(set(r.tolist())) == 20 and r.min() >= 0 and r.max() < 50 for r in a)
    np.testing.assert_array_equal(a, take(random_batches(50, 20, seed=3), 5))
    np.testing.assert_array_equal(a[2:], take(random_batches(50, 20, seed=3, start_step=2), 3))
    assert not np.array_equal(a[0], a[1])
    with pytest.raises(UserInputError, match=r"Invalid value for `batch_size`: expected at most the 10 "):
        random_batches(10, 11)


def test_triplets_have_the_right_classes_and_share_queries():
    labels = labels_of()
    t, per_query = 12, 4
    seen_negative_classes, seen_positions = set(), set()
    for rows in take(triplet_batches(labels, t, per_query, seed=2), 40):
        q, p, n = rows.reshape(t, 3).T
        assert np.all(labels[p] == labels[q]) and np.all(p != q)  # positive: same class, another image
        assert np.all(labels[n] != labels[q])  # negative: another class
        assert np.all(q.reshape(-1, per_query) == q.reshape(-1, per_query)[:, :1])  # queries shared
        assert len(set(q[::per_query].tolist())) == t // per_query  # distinct queries
        seen_negative_classes |= {(a, b) for a, b in zip(labels[q], labels[n])}
        seen_positions |= set(p.tolist())
    classes = np.unique(labels)
    # Every class pairs with (almost) every other as a negative, and positives cover most images.
    assert len(seen_negative_classes) >= 0.9 * len(classes) * (len(classes) - 1)
    assert len(seen_positions) >= 0.8 * len(labels)


def test_triplet_positives_and_negatives_are_uniform_per_image():
    labels = np.array([1, 0, 1, 2, 1, 1, 0, 2, 1, 2, 1, 0])  # rows of a class are not contiguous
    rows = np.concatenate(take(triplet_batches(labels, 4, 1, seed=0), 3000)).reshape(-1, 3)
    for q in range(len(labels)):
        mine = rows[rows[:, 0] == q]
        same = np.flatnonzero((labels == labels[q]) & (np.arange(len(labels)) != q))
        other = np.flatnonzero(labels != labels[q])
        pos = np.bincount(mine[:, 1], minlength=len(labels))
        neg = np.bincount(mine[:, 2], minlength=len(labels))
        assert pos.sum() == pos[same].sum() and neg.sum() == neg[other].sum()  # right classes, never q
        # Every candidate drawn, each within 35% of its uniform share (~1,000 draws per query).
        for counts, allowed in ((pos, same), (neg, other)):
            share = counts[allowed] / counts.sum()
            assert np.all(np.abs(share * len(allowed) - 1) < 0.35), (q, counts[allowed])


def test_triplets_reproducible_resumable_and_errors():
    labels = labels_of()
    a = take(triplet_batches(labels, 6, 2, seed=9), 4)
    np.testing.assert_array_equal(a, take(triplet_batches(labels, 6, 2, seed=9), 4))
    np.testing.assert_array_equal(a[1:], take(triplet_batches(labels, 6, 2, seed=9, start_step=1), 3))
    assert not np.array_equal(a[0], a[1])
    with pytest.raises(UserInputError, match="at least 2 classes"):
        triplet_batches(np.zeros(5, int), 2)
    with pytest.raises(UserInputError, match="at least 2 classes and a class with at least 2 images"):
        triplet_batches(np.arange(5), 2)
    with pytest.raises(UserInputError, match="`num_triplets`: expected at most 4 distinct queries"):
        triplet_batches(np.array([0, 0, 1, 1]), 9, 1)


def dense_reference(labels, p, k, seed, steps):
    """The earlier P x K draw, over a dense [classes, largest class] table built class by class:
    the grouped index must give exactly its batches (so trained models do not change)."""
    import tensorflow as tf
    classes, counts = np.unique(labels, return_counts=True)
    table = np.full((len(classes), counts.max()), -1, np.int32)
    for i, c in enumerate(classes):
        rows = np.flatnonzero(labels == c)
        table[i, : rows.size] = rows
    table_t, counts_t = tf.constant(table), tf.constant(counts.astype(np.int32))
    width, base, out = table.shape[1], tf.constant([seed, 0x5EED], tf.int64), []
    for step in range(steps):
        s_class, s_rank, s_repl = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(base, tf.constant(step, tf.int64)), num=3))
        chosen = tf.argsort(tf.random.stateless_uniform([len(classes)], seed=s_class))[:p]
        n = tf.gather(counts_t, chosen)[:, None]
        keys = tf.where(tf.range(width)[None, :] < n, tf.random.stateless_uniform([p, width], seed=s_rank), 2.0)
        distinct = tf.argsort(keys, axis=1)[:, :k]
        with_repl = tf.cast(tf.random.stateless_uniform([p, k], seed=s_repl) * tf.cast(n, tf.float32), tf.int32)
        pos = tf.where(n >= k, distinct, tf.minimum(with_repl, n - 1))
        out.append(tf.reshape(tf.gather(tf.gather(table_t, chosen), pos, batch_dims=1), [-1]).numpy())
    return out


def test_grouped_index_gives_the_dense_tables_batches():
    labels = labels_of(per_class=(5, 9, 1, 6, 20, 2, 5))  # two classes smaller than K
    for p, k, seed in ((4, 3, 1), (7, 4, 5)):
        got = take(pk_batches(labels, p, k, seed=seed), 25)
        want = dense_reference(labels, p, k, seed, 25)
        np.testing.assert_array_equal(got, np.stack(want))


def test_small_classes_skip_or_replace():
    labels = labels_of(per_class=(5, 9, 1, 6, 20, 2, 5))
    small = {int(c) for c in np.unique(labels) if (labels == c).sum() < 3}
    seen = {int(c) for b in take(pk_batches(labels, 3, 3, seed=0, small_classes="skip"), 60) for c in labels[b]}
    assert seen and not seen & small and len(seen) == 5
    seen = {int(c) for b in take(pk_batches(labels, 3, 3, seed=0), 60) for c in labels[b]}
    assert small <= seen
    with pytest.raises(UserInputError, match=r"Only 2 training classes have at least K=9 images, fewer than "
                                             r"`classes_per_batch`=3"):
        pk_batches(labels, 3, 9, small_classes="skip")


def test_pk_over_twenty_thousand_classes():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(20_000) * 7, rng.integers(2, 7, 20_000)))  # ~80k rows
    for rows in take(pk_batches(labels, 32, 2, seed=3), 5):
        blocks = labels[rows].reshape(32, 2)
        assert np.all(blocks == blocks[:, :1]) and len(np.unique(blocks[:, 0])) == 32
        assert len(set(rows.tolist())) == 64


def test_epoch_batches_see_every_row_once_per_epoch():
    batches = take(epoch_batches(60, 12, 5, seed=2), 15)  # 3 epochs of 5 batches
    epochs = [np.concatenate(batches[i:i + 5]) for i in (0, 5, 10)]
    for rows in epochs:
        assert sorted(rows.tolist()) == list(range(60))  # every row exactly once
    assert not np.array_equal(epochs[0], epochs[1])  # a new permutation each epoch
    # Resumed mid-epoch: the same stream.
    np.testing.assert_array_equal(take(epoch_batches(60, 12, 5, seed=2, start_step=7), 8), batches[7:])
    short = take(epoch_batches(65, 12, 5, seed=2), 5)  # 5 rows left over: no row twice within an epoch
    assert len(set(np.concatenate(short).tolist())) == 60
    with pytest.raises(UserInputError, match=r"`steps_per_epoch`: expected 1..5 \(one pass over 65 images"):
        epoch_batches(65, 12, 6)
    with pytest.raises(UserInputError, match=r"`batch_size`: expected at most the 10 training images"):
        epoch_batches(10, 12, 1)
