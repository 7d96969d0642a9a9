"""Cross-batch memory (`tfsim.losses.memory`): anchored terms against naive float64 loops, the
FIFO against a Python deque over steps that wrap around, the warm-up, and resume from a saved
trainer. (Under MirroredStrategy: tests/losses/test_distributed.py.)"""

from collections import deque

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.losses import reference
from tfsim.losses import (LOSSES, CrossBatchMemory, MemoryTrainer, NormalizedSoftmaxLoss, TripletSemiHardLoss,
                          input_kind, supports_cross_replica)

MINING = [n for n in LOSSES if input_kind(n) == "embeddings" and supports_cross_replica(n)]


def _batch(seed, n=14, d=5, classes=4):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, n).astype(np.int32), rng.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("name", MINING)
def test_every_row_an_anchor_gives_the_plain_terms(name):
    labels, x = _batch(1)
    terms = LOSSES[name].terms
    c, z = terms(labels, x)
    ca, za = terms(labels, x, num_anchors=len(labels))
    np.testing.assert_allclose(ca.numpy(), c.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(za), float(z), rtol=1e-6)


@pytest.mark.parametrize("name", ["triplet_semihard", "triplet_hard", "multi_similarity", "nca",
                                  "batch_all_triplet"])
def test_anchor_rows_of_row_wise_losses_are_the_square_rows(name):
    """Losses whose terms are row-wise: the first A rows against all N equal those rows of the square."""
    labels, x = _batch(2)
    c, _ = LOSSES[name].terms(labels, x)
    ca, _ = LOSSES[name].terms(labels, x, num_anchors=5)
    assert ca.shape == (5,)
    np.testing.assert_allclose(ca.numpy(), c.numpy()[:5], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_anchored_triplet_losses_match_naive_loops(metric, seed):
    labels, x = _batch(seed, n=16)
    for name, ref, kw in [("triplet_semihard", reference.triplet_semihard, {"margin": 0.3}),
                          ("triplet_hard", reference.triplet_hard, {"margin": 0.3})]:
        c, z = LOSSES[name].terms(labels, x, distance_metric=metric, num_anchors=6, **kw)
        got = float(tf.math.divide_no_nan(tf.reduce_sum(c), z))
        assert got == pytest.approx(ref(labels, x, metric=metric, anchors=6, **kw), rel=1e-4, abs=1e-6), name
    c, z = LOSSES["multi_similarity"].terms(labels, x, num_anchors=6)
    assert float(tf.reduce_sum(c) / z) == pytest.approx(reference.multi_similarity(labels, x, anchors=6),
                                                         rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_anchored_pair_losses_match_naive_loops(seed):
    """Lifted structure (each pair's J over both ends' negatives among every row), contrastive and
    binomial deviance (means over the anchors' pairs) with 6 anchors of 16 rows."""
    labels, x = _batch(seed, n=16)
    x = x * 0.4  # distances around the margins, where every term is active
    for name, ref, kw in [("lifted_struct", reference.lifted_struct, {"margin": 1.0}),
                          ("contrastive", reference.contrastive, {"pos_margin": 0.1, "neg_margin": 1.0}),
                          ("binomial_deviance", reference.binomial_deviance, {})]:
        c, z = LOSSES[name].terms(labels, x, num_anchors=6, **kw)
        got = float(tf.math.divide_no_nan(tf.reduce_sum(c), z))
        want = ref(labels, x, anchors=6, **kw)
        assert want > 0 and got == pytest.approx(want, rel=1e-4, abs=1e-6), name
        assert want != pytest.approx(ref(labels, x, **kw), rel=1e-3), name  # the anchors matter


def _embedder(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(4)(inputs))
    return keras.Model(inputs, outputs, name="embedder")


def _stream(steps, batch=6, seed=7):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(batch, 6)).astype(np.float32), rng.integers(0, 3, batch).astype(np.int32))
            for _ in range(steps)]


def test_trainer_steps_match_a_naive_fifo_reference():
    """Seven steps of 6 images into a memory of 10 (it wraps from the second step on), with 2
    warm-up steps: each step's loss is the naive semi-hard loss of the batch's anchors against
    the batch and the deque of the last 10 embeddings *as they were when written*, and the
    trainer's memory holds exactly those embeddings and labels in ring order."""
    trainer = MemoryTrainer(_embedder(), memory_size=10, warmup_steps=2)
    trainer.compile(optimizer=keras.optimizers.SGD(0.3), loss=TripletSemiHardLoss(margin=0.5))
    fifo, ring = deque(maxlen=10), [None] * 10
    for step, (x, y) in enumerate(_stream(7)):
        e = trainer.embedder(x).numpy().astype(np.float64)  # the embeddings this step sees (before its update)
        refs = list(fifo) if step >= 2 else []
        labels = np.concatenate([y, [r[0] for r in refs]]).astype(np.int64)
        emb = np.concatenate([e, np.array([r[1] for r in refs]).reshape(-1, 4)])
        want = reference.triplet_semihard(labels, emb, margin=0.5, anchors=len(y))
        got = trainer.train_on_batch(x, y)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), step
        for i, (label, row) in enumerate(zip(y, e)):
            fifo.append((label, row))
            ring[(step * 6 + i) % 10] = (label, row)
    assert int(trainer.memory.filled.numpy()) == 10 and int(trainer.memory.next_slot.numpy()) == 42 % 10
    np.testing.assert_array_equal(trainer.memory.labels.numpy(), [r[0] for r in ring])
    np.testing.assert_allclose(trainer.memory.embeddings.numpy(), np.array([r[1] for r in ring]), atol=1e-6)
    # the warm-up was real: with the memory read from step 0 the second step's loss differs
    eager = MemoryTrainer(_embedder(), memory_size=10)
    eager.compile(optimizer=keras.optimizers.SGD(0.3), loss=TripletSemiHardLoss(margin=0.5))
    late = MemoryTrainer(_embedder(), memory_size=10, warmup_steps=2)
    late.compile(optimizer=keras.optimizers.SGD(0.3), loss=TripletSemiHardLoss(margin=0.5))
    losses = [(eager.train_on_batch(x, y), late.train_on_batch(x, y)) for x, y in _stream(2)]
    assert losses[0][0] == pytest.approx(losses[0][1]) and losses[1][0] != pytest.approx(losses[1][1])


def test_a_saved_trainer_resumes_with_its_memory(tmp_path):
    """Three steps, save, load, three more = six straight steps (weights and memory)."""
    stream = _stream(6, seed=11)

    def trainer():
        t = MemoryTrainer(_embedder(), memory_size=8, warmup_steps=1)
        t.compile(optimizer=keras.optimizers.Adam(0.05), loss=TripletSemiHardLoss(margin=0.5))
        return t

    straight = trainer()
    for x, y in stream:
        straight.train_on_batch(x, y)
    first = trainer()
    for x, y in stream[:3]:
        first.train_on_batch(x, y)
    first.save(tmp_path / "t.keras")
    resumed = keras.models.load_model(tmp_path / "t.keras")
    assert isinstance(resumed, MemoryTrainer) and int(resumed.memory.steps.numpy()) == 3
    for x, y in stream[3:]:
        resumed.train_on_batch(x, y)
    for a, b in zip(resumed.embedder.weights, straight.embedder.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    for a, b in zip(resumed.memory.weights, straight.memory.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_a_batch_larger_than_the_memory_keeps_its_last_rows():
    memory = CrossBatchMemory(4, 2)
    memory.write(tf.constant([0, 1, 2, 3, 4, 5]), tf.reshape(tf.range(12, dtype=tf.float32), [6, 2]))
    labels, embeddings = memory.read()
    assert sorted(labels.numpy().tolist()) == [2, 3, 4, 5]
    assert int(memory.next_slot.numpy()) == 0 and int(memory.filled.numpy()) == 4


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="memory_size"):
        MemoryTrainer(_embedder(), memory_size=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        MemoryTrainer(_embedder(), memory_size=4, warmup_steps=-1)
    trainer = MemoryTrainer(_embedder(), memory_size=4)
    trainer.compile(optimizer="sgd", loss=NormalizedSoftmaxLoss())
    x, y = _stream(1)[0]
    with pytest.raises(ValueError, match="mining losses"):
        trainer.train_on_batch(x, y)


def test_an_xla_compiled_trainer_takes_the_same_steps():
    """train.jit_compile=true: the memory's filled part is a bounded dynamic shape to XLA."""
    stream = _stream(5, seed=3)
    losses = []
    for jit in (False, True):
        trainer = MemoryTrainer(_embedder(), memory_size=10, warmup_steps=1)
        trainer.compile(optimizer=keras.optimizers.SGD(0.3), loss=TripletSemiHardLoss(margin=0.5), jit_compile=jit)
        losses.append([trainer.train_on_batch(x, y) for x, y in stream])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert len(set(np.round(losses[0], 6))) == 5


def test_the_loss_is_float32_for_a_float16_embedder():
    trainer = MemoryTrainer(_embedder(), memory_size=10)
    trainer.compile(optimizer="sgd", loss=TripletSemiHardLoss(margin=0.5))
    x, y = _stream(1)[0]
    y_pred = tf.cast(trainer.embedder(x), tf.float16)
    loss = trainer.compute_loss(y=tf.constant(y), y_pred=y_pred, training=True)
    assert loss.dtype == tf.float32 and float(loss) > 0
