"""Backbones and embedding head: every registered backbone builds, embeds to unit vectors, trains."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsim.errors import UserInputError
from tfsim.losses import TripletSemiHardLoss
from tfsim.models import BACKBONES, build_embedding_model


@pytest.mark.parametrize("backbone,size", [("small_resnet", 28),
                                           pytest.param("resnet50", 32, marks=pytest.mark.slow)])
@pytest.mark.parametrize("pooling", ["avg", "flatten"])
def test_every_backbone_embeds_unit_vectors_and_gets_gradients(backbone, size, pooling):
    assert set(BACKBONES) == {"small_resnet", "resnet50"}
    options = {"width": 8} if backbone == "small_resnet" else {}
    model = build_embedding_model(backbone, size, embedding_dim=8, pooling=pooling, seed=0, **options)
    x = tf.random.uniform([6, size, size, 3], 0, 255, seed=1)
    labels = tf.constant([0, 0, 1, 1, 2, 2])
    with tf.GradientTape() as tape:
        emb = model(x, training=True)
        loss = TripletSemiHardLoss(margin=1.0)(labels, emb)
    assert emb.shape == (6, 8)
    np.testing.assert_allclose(tf.norm(emb, axis=1).numpy(), 1.0, atol=1e-5)
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


@pytest.mark.parametrize("zero_init", [False, True])
def test_residual_branches_start_at_gamma_one_unless_zero_init_is_asked(zero_init):
    model = build_embedding_model("small_resnet", 28, 8, width=8, seed=0, blocks_per_stage=2,
                                  zero_init_residual=zero_init)
    backbone = model.get_layer("small_resnet")
    last_bn = [layer for layer in backbone.layers if layer.name.endswith("_bn2")]
    assert len(last_bn) == 6
    for layer in last_bn:
        np.testing.assert_array_equal(layer.gamma.numpy(), 0.0 if zero_init else 1.0)
    # the first BatchNorm of each branch and the stem are never zeroed
    assert all(np.all(layer.gamma.numpy() == 1.0) for layer in backbone.layers
               if layer.name.endswith(("_bn1", "stem_bn")))
    # zero-initialised branches make each block the identity on its shortcut at init
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 3)).astype(np.float32)
    block = keras.Model(backbone.input, [backbone.get_layer("stage1_block2_add").input[0],
                                         backbone.get_layer("stage1_block2_add").output])
    shortcut, added = block(x, training=False)
    assert np.allclose(shortcut, added) == zero_init


@pytest.mark.slow  # over a second and a half: kept out of the fast tier
def test_same_seed_same_untrained_model():
    a = build_embedding_model("small_resnet", 28, 8, width=8, seed=3)
    b = build_embedding_model("small_resnet", 28, 8, width=8, seed=3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_model_round_trips_through_keras_file(tmp_path):
    model = build_embedding_model("small_resnet", 28, 8, width=8, seed=0)
    model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.3, distance_metric="angular"))
    model.save(tmp_path / "m.keras")
    clone = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(clone.loss, TripletSemiHardLoss) and clone.loss.margin == 0.3
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 3)).astype(np.float32)
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_weights_errors():
    with pytest.raises(UserInputError, match="no pretrained weights"):
        build_embedding_model("small_resnet", 28, weights="imagenet")
    with pytest.raises(UserInputError, match="no such file"):
        build_embedding_model("resnet50", 32, weights="/nonexistent/weights.h5")
    with pytest.raises(ValueError, match=r"Invalid argument 'width' for backbone 'resnet50': expected some of \[\]"):
        build_embedding_model("resnet50", 32, width=8)
    with pytest.raises(ValueError, match=r"Invalid value for `backbone`: expected one of"):
        build_embedding_model("vgg", 32)


@pytest.mark.slow  # over a second and a half: kept out of the fast tier
def test_resnet50_accepts_a_local_weights_file(tmp_path):
    # The offline stand-in for "imagenet": weights saved from one ResNet50 load into another.
    src = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    src.save_weights(path)
    model = build_embedding_model("resnet50", 32, 8, weights=str(path))
    inner = [layer for layer in model.get_layer("resnet50").layers if isinstance(layer, keras.Model)][0]
    np.testing.assert_array_equal(inner.get_layer("conv1_conv").kernel.numpy(),
                                  src.get_layer("conv1_conv").kernel.numpy())
