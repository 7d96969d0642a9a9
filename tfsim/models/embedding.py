"""The embedding model: backbone -> global pooling -> (layer norm) -> dense projection -> L2 normalisation.

Input: float32 `[B, S, S, 3]` pixels in [0, 255] (see `tfsim.data.pipeline`).
Output: float32 `[B, embedding_dim]` unit vectors, so cosine similarity, dot product
and L2 distance rank neighbours identically.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import layers

from tfsim.models.backbones import get_backbone

HEAD_LAYER = "projection"  # the head's trainable layer (`train.head_lr_multiplier` scales its rate)


def build_embedding_model(backbone: str = "small_resnet", image_size: int = 28, embedding_dim: int = 128,
                          pooling: str = "avg", weights: Optional[str] = None, seed: Optional[int] = None,
                          layer_norm: bool = False, head: str = "embedding", code_bits: int = 32,
                          **backbone_options) -> keras.Model:
    """Builds the embedding model.

    Args:
        backbone: a name in `tfsim.models.backbones.BACKBONES`.
        image_size: input side S in pixels.
        embedding_dim: output dimension.
        pooling: "avg" or "max" global pooling, or "flatten" (keeps the spatial layout).
        weights: backbone weights (None, "imagenet" or a file; see backbones).
        seed: seeds Keras initialisers for a reproducible untrained model.
        layer_norm: layer normalisation without affine parameters on the pooled features
            (Zhai & Wu 2019, arXiv:1811.12649, section 3.2).
        head: "embedding" (L2-normalised `embedding_dim` outputs) or "hash" (`code_bits` tanh
            outputs, the relaxed binary codes of learning to hash; `tfsim.index.hamming`).
        code_bits: the code length of the hash head.
        **backbone_options: the backbone's own options (`backbones.backbone_arguments`; for
            small_resnet: width, blocks_per_stage, zero_init_residual); None = its default.

    Returns:
        A functional `keras.Model` named "embedder", input "images", output "embeddings".

    Raises:
        ValueError: an unknown backbone or an option it does not take.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    features = get_backbone(backbone, image_size, weights=weights, **backbone_options)
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = features(inputs)
    if pooling == "flatten":
        # Keeps the spatial layout of the final feature map (useful on small, aligned
        # images such as Fashion-MNIST, where global pooling discards where things are).
        x = layers.Flatten(name="flatten_pool")(x)
    else:
        pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
        x = pool(name=f"{pooling}_pool")(x)
    if layer_norm:
        x = layers.LayerNormalization(center=False, scale=False, name="pooled_layer_norm")(x)
    # float32 whatever the dtype policy: under mixed precision the embeddings (and so the
    # losses, the whitening and the export) stay float32.
    if head == "hash":
        x = layers.Dense(code_bits, name=HEAD_LAYER)(x)
        outputs = layers.Activation("tanh", name="embeddings", dtype="float32")(x)
    elif head == "embedding":
        x = layers.Dense(embedding_dim, name=HEAD_LAYER)(x)
        outputs = layers.UnitNormalization(axis=-1, name="embeddings", dtype="float32")(x)
    else:
        raise ValueError(f"Invalid value for `head`: expected 'embedding' or 'hash'. Received: head={head!r}")
    return keras.Model(inputs, outputs, name="embedder")
