"""P x K sampler invariants."""

import numpy as np
import pytest

from tfsim.data.samplers import pk_batches
from tfsim.errors import UserInputError


def labels_of(n_classes=7, per_class=(5, 9, 12, 6, 20, 8, 5)):
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in zip(range(n_classes), per_class)])
    return rng.permutation(labels) * 3 + 1  # arbitrary label values, shuffled rows


def take(ds, n):
    return [b.numpy() for b in ds.take(n)]


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
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    epoch1, epoch2 = a[:10], a[10:]  # an "epoch" of 10 steps vs the next
    assert not all(np.array_equal(x, y) for x, y in zip(epoch1, epoch2))


def test_resume_from_step_replays_the_same_stream():
    labels = labels_of()
    full = take(pk_batches(labels, 3, 4, seed=2), 12)
    resumed = take(pk_batches(labels, 3, 4, seed=2, start_step=7), 5)
    assert all(np.array_equal(x, y) for x, y in zip(full[7:], resumed))


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
    (8, 2, "larger than the training set"),
    (3, 30, "larger than the training set"),
])
def test_bad_batch_shapes_are_clear_errors(p, k, match):
    with pytest.raises(UserInputError, match=match):
        pk_batches(labels_of(), p, k)
