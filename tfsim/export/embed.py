"""Embedding images with an export: its own `serve_images` signature and preprocessing (size,
crop), so that the vectors are those the served model computes.

Used to index a catalogue (`tfsim.export.catalogue`), to build the index inside a new export
(`tfsim.training.stages.export_stage`) and to evaluate an export (`tfsim.training.assessment`).
"""

from __future__ import annotations

import os

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


def embed_export(model_dir: os.PathLike, images: ImageSet, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """`[N, D]` float32 embeddings of `images`, row-aligned with it, by the export's `serve_images`
    at the export's own image size and centre crop (export.json).

    Args:
        model_dir: an export version folder (complete, or still under its temporary name).
        images: the images to embed, in order, without augmentation.
        batch_size: images per call of the signature.
        progress: a progress bar over the images.
    """
    meta = read_export(model_dir)
    serve = tf.saved_model.load(str(model_dir)).signatures["serve_images"]
    bar = keras.utils.Progbar(len(images), unit_name="image") if progress else None
    out = []
    for batch in pipeline.eval_dataset(images, meta["image_size"], batch_size, meta.get("center_crop", 1.0)):
        out.append(np.asarray(serve(images=batch)["embeddings"], np.float32))
        if bar is not None:
            bar.add(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, int(meta["embedding_dim"])), np.float32)
