"""The Task builds each object of a run from the config: inputs, model, loss, optimiser, metrics,
callbacks. Cheap: nothing is trained."""

import math

import numpy as np
import pytest

from tfsim import config
from tfsim.losses.quantization import HashingLoss
from tfsim.models.embedding import HEAD_LAYER
from tfsim.models.proxies import PROXY_LAYER
from tfsim.training import callbacks, tensorboard
from tfsim.training.optimizers import ScaledAdam, ScaledSGD, WarmUp
from tfsim.training.task import Task

SMALL = ["model.width=8", "model.embedding_dim=8"]


def task(*sets: str) -> Task:
    return Task(config.load("default", [*SMALL, *sets]))


def test_build_inputs_splits_the_configured_classes_and_select_best_carves_validation_classes():
    t = task("train.select_best=true", "train.val_fraction=0.34")
    split = t.build_inputs()
    names = split.dataset.class_names
    held_out = {names.index(c) for c in split.test_class_names}
    assert held_out == {2, 4, 5, 7} and set(np.unique(split.test.labels)) == held_out
    assert not held_out & set(np.unique(split.train.labels))
    assert len(split.train) + len(split.test) == len(split.dataset)
    fitting = t.fit_split(split)
    trained, validation = set(np.unique(fitting.train.labels)), set(np.unique(fitting.test.labels))
    assert len(validation) == 2 and not trained & validation
    assert trained | validation == set(np.unique(split.train.labels))
    assert fitting.dataset is split.dataset
    assert task().fit_split(split) is split  # without select_best: the split as it is


def test_a_proxy_loss_gets_a_proxy_trainer_and_labels_0_to_c_minus_1():
    t = task("loss.name=normalized_softmax", "sampler.kind=random")
    model = t.build_model(num_classes=5)
    proxies = model.get_layer(PROXY_LAYER)
    assert proxies.get_weights()[0].shape == (5, 8) and model.output_shape == (None, 5)
    split = t.build_inputs()
    labels = t.training_set(split.train).labels
    assert labels.dtype == np.int32 and sorted(np.unique(labels)) == list(range(len(np.unique(split.train.labels))))
    with pytest.raises(ValueError, match=r"Invalid value for `num_classes`: expected the number of training classes"):
        t.build_model()


def test_a_batch_loss_gets_the_embedder_with_its_labels_unchanged():
    t = task("model.freeze_batchnorm=true")
    model = t.build_model()
    assert model.output_shape == (None, 8)
    with pytest.raises(ValueError):
        model.get_layer(PROXY_LAYER)
    assert not any(layer.trainable for layer in model._flatten_layers() if type(layer).__name__ == "BatchNormalization")
    split = t.build_inputs()
    assert t.training_set(split.train) is split.train


def test_the_loss_takes_its_arguments_from_the_config():
    loss = task("loss.name=contrastive", "loss.neg_margin=0.7", "loss.distance_metric=angular",
                "loss.cross_replica=true").build_loss()
    got = loss.get_config()
    assert type(loss).__name__ == "ContrastiveLoss"
    got = (got["neg_margin"], got["distance_metric"], got["pos_margin"], got["cross_replica"])
    assert got == (0.7, "angular", 0.0, True)
    # Hash codes: a batch loss is wrapped to see them at unit scale; a proxy loss is not.
    hashed = task("model.head=hash", "whitening.enabled=false", "loss.quantization_weight=0.1").build_loss()
    assert isinstance(hashed, HashingLoss) and hashed.weight == pytest.approx(0.1) and hashed.code_bits == 32
    proxy = task("model.head=hash", "whitening.enabled=false", "loss.name=proxy_nca",
                 "sampler.kind=random").build_loss()
    assert not isinstance(proxy, HashingLoss)


def test_the_optimizer_follows_the_schedule_and_scales_the_head_and_proxies():
    t = task("train.optimizer=sgd", "train.momentum=0.8", "train.warmup_steps=10", "train.learning_rate=0.01",
             "train.head_lr_multiplier=5", "loss.name=proxy_nca", "sampler.kind=random")
    opt = t.build_optimizer(total_steps=110)
    assert isinstance(opt, ScaledSGD) and opt.momentum == pytest.approx(0.8)
    assert opt.lr_multipliers == {HEAD_LAYER: 5.0}  # the proxies' multiplier is 1: left out
    schedule = opt._learning_rate
    assert isinstance(schedule, WarmUp)
    for step in (0, 9, 10, 60, 109):  # a linear warm-up, then cosine to 0 over the rest
        want = 0.01 * (step + 1) / 10 if step < 10 else 0.01 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert float(schedule(step)) == pytest.approx(want, rel=1e-4, abs=1e-9)
    adam = task("loss.proxy_lr_multiplier=10", "loss.name=proxy_nca", "sampler.kind=random").build_optimizer(100)
    assert isinstance(adam, ScaledAdam) and adam.lr_multipliers == {PROXY_LAYER: 10.0}


def test_steps_and_batch_size_come_from_the_sampler():
    assert task().global_batch_size == 60  # P x K = 6 x 10
    assert task("sampler.kind=triplets", "loss.name=triplet_margin", "sampler.batch_size=62").global_batch_size == 60
    epoch = task("sampler.kind=epoch", "sampler.batch_size=16", "train.steps_per_epoch=0")
    assert epoch.steps_per_epoch(100) == 6 and task().steps_per_epoch(100) == 100


def test_training_batches_are_indexed_by_step():
    t = task("sampler.classes_per_batch=3", "sampler.examples_per_class=4")
    train_set = t.training_set(t.build_inputs().train)
    images, labels = next(iter(t.training_batches(train_set, start_step=0, steps_per_epoch=5).skip(2)))
    again_images, again_labels = next(iter(t.training_batches(train_set, start_step=2, steps_per_epoch=5)))
    assert images.shape == (12, 28, 28, 3) and len(np.unique(labels.numpy())) == 3
    np.testing.assert_array_equal(labels.numpy(), again_labels.numpy())
    np.testing.assert_allclose(images.numpy(), again_images.numpy())


def test_metrics_and_callbacks_in_the_order_they_must_run(tmp_path):
    import tensorflow as tf
    t = task("train.select_best=true", "train.checkpoint_every_steps=2")
    split = t.build_inputs()
    model = t.build_model()
    evaluation = t.build_metrics(split.test, model)
    assert isinstance(evaluation, callbacks.RetrievalEvaluation) and evaluation.ks == (1, 2, 4, 8)
    made = t.build_callbacks(evaluation, split.test, tmp_path, tmp_path, steps_per_epoch=4, initial_step=0,
                             strategy=tf.distribute.get_strategy())
    assert [type(c) for c in made] == [callbacks.StopOnNonFiniteLoss, callbacks.SyncReplicaStatistics,
                                       tensorboard.TrainingRate, callbacks.RetrievalEvaluation,
                                       tensorboard.NeighbourPictures, callbacks.BestCheckpoint,
                                       tensorboard.EpochScalars, callbacks.ResumableCheckpoint,
                                       callbacks.StepCheckpoint]
    assert task("eval.every_epoch=false").build_metrics(split.test, model) is None
