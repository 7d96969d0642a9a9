"""Embedding images with an export: its own `serve_images` signature and preprocessing (size, crop).

Used by evaluation (`tfsim.evaluation.evaluate`) and indexing (`tfsim.index.catalogue`), which
both sit above the export layer.
"""

from __future__ import annotations

import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tfsim.data import pipeline
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.sources import ImageSet
from tfsim.export.saved_model import read_export


def export_max_pixels(model_dir: os.PathLike) -> int:
    """The largest image (width x height) an export decodes (its `max_pixels`, recorded in
    export.json; the default for an export written before tfsim recorded it)."""
    return int(read_export(model_dir).get("max_pixels") or DEFAULT_MAX_PIXELS)


def _embed_batches(predict: Callable, images: ImageSet, image_size: int, center_crop: float,
                   batch_size: int, progress: bool) -> np.ndarray:
    """`predict(batch)` over the eval pipeline of `images`, in order, with a progress bar."""
    bar = keras.utils.Progbar(len(images), unit_name="image") if progress else None
    out = []
    for batch in pipeline.eval_dataset(images, image_size, batch_size, center_crop):
        out.append(np.asarray(predict(batch), np.float32))
        if bar is not None:
            bar.add(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_export(model_dir: os.PathLike, images: ImageSet, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """`[N, D]` embeddings of `images` by the export's `serve_images` (its preprocessing: size, crop)."""
    meta = read_export(model_dir)
    serve = tf.saved_model.load(str(model_dir)).signatures["serve_images"]
    return _embed_batches(lambda batch: serve(images=batch)["embeddings"].numpy(), images, meta["image_size"],
                          meta.get("center_crop", 1.0), batch_size, progress)
