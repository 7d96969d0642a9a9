"""Embedding a whole ImageSet with a model (in order, no augmentation)."""

from __future__ import annotations

import numpy as np

from tfsim.data.pipeline import eval_dataset
from tfsim.data.sources import ImageSet


def embed(model, images: ImageSet, image_size: int, batch_size: int = 256, verbose: int = 0,
          center_crop: float = 1.0) -> np.ndarray:
    """`[N, D]` float32 embeddings of every image of `images`, row-aligned with it (`center_crop`:
    see `tfsim.data.preprocess.preprocess`)."""
    return np.asarray(model.predict(eval_dataset(images, image_size, batch_size, center_crop), verbose=verbose),
                      np.float32)
