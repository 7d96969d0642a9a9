"""Backbones: image `[B, S, S, 3]` float pixels in [0, 255] -> feature map.

Registry `BACKBONES` maps config names to builders `(image_size, weights, **options) -> keras.Model`;
`backbone_arguments(name)` lists a backbone's options (small_resnet: width, blocks_per_stage,
zero_init_residual; resnet50: none).

* ``small_resnet``: a pre-activation-free ResNet for 28-64 px images (He et al.,
  2016, basic blocks): 3x3 stem, three stages of `blocks_per_stage` basic blocks at widths
  w, 2w, 4w with stride 2 between stages. ~0.7M parameters at w=32 with 2 blocks per stage. Random init only.
* ``resnet50``: `keras.applications.ResNet50` without its top, with its own
  "caffe" preprocessing inside the model. `weights` is None (random), "imagenet"
  (downloaded by Keras, needs network) or the path of a local weights file.

Reference: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016, arXiv:1512.03385.
"""

from __future__ import annotations

import inspect
import os
from typing import Callable, Optional

import keras
from keras import layers

from tfsim.errors import UserInputError

_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
# Moving-statistics momentum of the small ResNet's BatchNorm. Keras' 0.99 averages
# over ~100 steps, which lags behind the weights in short runs and makes inference-mode
# embeddings stale; 0.9 (~10 steps) tracks them.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="tfsim")
class CaffePreprocess(layers.Layer):
    """RGB [0, 255] -> BGR minus the ImageNet mean (keras.applications' "caffe" mode)."""

    def call(self, x):
        return x[..., ::-1] - keras.ops.convert_to_tensor(_IMAGENET_BGR_MEAN, dtype=x.dtype)


@keras.saving.register_keras_serializable(package="tfsim")
class BatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step is TensorFlow's fused kernel.

    (Keras's class name on purpose: Keras names a layer's weights in a `.weights.h5` or `.keras`
    file after its class, so weight files of models built with Keras's own layer load into these
    and back. In a `.keras` file's config it is "tfsim>BatchNormalization".)

    Keras 3 normalises a batch with about ten separate ops (moments, then the normalisation), and
    differentiates each. In training, on TensorFlow, for an `[B, H, W, C]` feature map normalised
    over its channels, this layer computes the same with `FusedBatchNormV3` (one op, one gradient
    op): the same outputs and the same moving statistics (Keras's update, with the batch's biased
    variance as Keras uses it), to float32 rounding. Everything else (inference, other ranks or
    axes, masks, renormalisation, `synchronized`, an epsilon under the kernel's 1.001e-5, float64,
    other backends) is Keras's own code. Measured on the small ResNet (`bench/peer_parity.py`'s matched
    recipe, 2 cores): training steps 45-57 ms -> 39-43 ms; `bench/batchnorm_speed.py`: 0.83x Keras's
    step time for the small ResNet and for ResNet50 at 224 px.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # lazy: the backbones are built on any backend

        x = tf.cast(inputs, tf.float32)  # (as Keras: computed in float32 under mixed precision too)
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon, is_training=True)
        # The kernel returns the variance with Bessel's correction (n / (n - 1), none when n == 1);
        # Keras's moving variance averages the batch's biased variance, which the kernel normalised by.
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        variance = tf.where(n > 1, unbiased * (n - 1) / n, unbiased)
        self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(tf.cast(self.moving_variance, tf.float32) * self.momentum
                                    + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        rank = len(inputs.shape)
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        return (keras.backend.backend() == "tensorflow" and mask is None and rank == 4
                and dtype in ("float16", "bfloat16", "float32")
                and self.axis in (-1, rank - 1) and not self.renorm and not self.synchronized
                and self.epsilon >= 1.001e-5 and inputs.shape[-1] is not None)


def _basic_block(x, filters: int, stride: int, name: str, zero_init_residual: bool = False):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2",
                           gamma_initializer="zeros" if zero_init_residual else "ones")(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def small_resnet(image_size: int, weights: Optional[str] = None, width: int = 32,
                 blocks_per_stage: int = 1, zero_init_residual: bool = False) -> keras.Model:
    """Small ResNet for small images (see module doc).

    `zero_init_residual`: start the last BatchNorm scale (gamma) of every residual branch at
    0, so each block starts as the identity (Goyal et al. 2017, arXiv:1706.02677, for very
    deep networks trained long; torchvision's option of the same name, off by default as
    here). Measured on `bench/peer_parity.py`, it costs this shallow network 0.1 to 0.25
    held-out Recall@1 in short runs: the branches' gradients start at zero and the
    network is, for its first hundreds of steps, a stem and three strided projections.
    """
    if weights is not None:
        raise UserInputError(
            "Invalid value for `weights`: backbone 'small_resnet' has no pretrained weights; "
            f"expected null. Received: weights={weights!r}")
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, mult in enumerate((1, 2, 4)):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, width * mult, stride, f"stage{stage + 1}_block{block + 1}", zero_init_residual)
    return keras.Model(inputs, x, name="small_resnet")


def resnet50(image_size: int, weights: Optional[str] = None) -> keras.Model:
    """keras.applications ResNet50 feature extractor (see module doc; its widths and depth are fixed)."""
    if weights not in (None, "imagenet") and not os.path.isfile(str(weights)):
        raise UserInputError(
            "Invalid value for `weights`: expected None, 'imagenet' or the path of an existing "
            f"weights file. Received: weights={weights!r} (no such file).")
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = CaffePreprocess(name="caffe_preprocess")(inputs)
    base = keras.applications.ResNet50(include_top=False, weights=weights,
                                       input_shape=(image_size, image_size, 3))
    return keras.Model(inputs, with_fused_norms(base)(x), name="resnet50")


def with_fused_norms(model: keras.Model) -> keras.Model:
    """A copy of the functional `model` (weights included) whose Keras `BatchNormalization` layers
    are tfsim's fused `BatchNormalization` of the same config: keras.applications builds Keras's own."""
    def clone(layer):
        cls = BatchNormalization if type(layer) is layers.BatchNormalization else layer.__class__
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "small_resnet": small_resnet,
    "resnet50": resnet50,
}


def backbone_arguments(name: str) -> list[str]:
    """The options the registered backbone `name` takes besides `image_size` and `weights`."""
    params = inspect.signature(BACKBONES[name]).parameters
    return [k for k in params if k not in ("image_size", "weights")]


def get_backbone(name: str, image_size: int, weights: Optional[str] = None, **options) -> keras.Model:
    """Builds the registered backbone `name`; `options` that are None take the backbone's defaults.

    Raises:
        ValueError: an unknown `name`, or an option the backbone does not take (e.g. `width`
            for resnet50), naming the ones it takes.
    """
    if name not in BACKBONES:
        raise ValueError(
            f"Invalid value for `backbone`: expected one of {sorted(BACKBONES)}. Received: backbone={name!r}")
    takes = backbone_arguments(name)
    unknown = sorted(k for k, v in options.items() if k not in takes and v is not None)
    if unknown:
        raise ValueError(f"Invalid argument {unknown[0]!r} for backbone {name!r}: expected some of {takes}. "
                         f"Received: {unknown[0]}={options[unknown[0]]!r}")
    return BACKBONES[name](image_size, weights=weights, **{k: v for k, v in options.items() if v is not None})
