"""Index any catalogue of images with an export, and add to it later.

    build_index(model, data, out)
      the export (`model_info`: name, version, embedding dim, similarity, fingerprint)
      -> the images of a data spec (a folder, a list file, tfds:NAME[:SPLIT], default)
      -> embedded by the export's own `serve_images` (`evaluation.evaluate.embed_export`)
      -> `scann_index.build` (self-tuning; `options` as in `scann_index.options`)
      -> `scann_index.save(out)`: atomic, absolute image paths (or the pixels, for images that
         only exist in memory), the model recorded

    add_to_index(index, data)
      embeds new images with the index's own model (a different model is refused) and inserts
      them into the ScaNN searcher without retraining it (`upsert`), then rewrites the folder
      atomically. The tree and its tuned settings stay those of the first build: after the
      gallery has grown by half, rebuild (`build_index` again) for the tuned recall.

`check_model` refuses an index built by another model than the one that embeds the queries:
their vectors would not be comparable and the results would be silently wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from tfsim import distances
from tfsim.errors import UserInputError
from tfsim.index import scann_index

log = logging.getLogger(__name__)
# Added items beyond this share of the built size: the tree's leaves and tuned settings no
# longer describe the gallery well, so `add_to_index` advises a rebuild.
REBUILD_AFTER_GROWTH = 0.5


def _variables_digest(export_dir: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted((export_dir / "variables").glob("*")):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def model_info(export_dir: os.PathLike) -> dict:
    """What identifies an export's embeddings: recorded in an index, compared by `check_model`."""
    from tfsim.export import read_export

    export_dir = Path(export_dir)
    meta = read_export(export_dir)
    return {"path": str(export_dir.resolve()), "name": meta.get("name"), "version": meta.get("version"),
            "embedding_dim": int(meta["embedding_dim"]), "similarity": meta.get("similarity", "cosine"),
            "fingerprint": meta.get("content_hash") or _variables_digest(export_dir),
            "binary_codes": bool(meta.get("binary_codes", False))}


def check_model(index_dir: os.PathLike, index_meta: dict, export_dir: os.PathLike) -> None:
    """Refuses to use the index at `index_dir` with an export that did not build it.

    Raises:
        UserInputError: the export's fingerprint or embedding dim differs from the index's model.
    """
    built_by = index_meta.get("model") or {}
    if not built_by.get("fingerprint"):
        return  # an index written before tfsim recorded its model
    mine = model_info(export_dir)
    if mine["fingerprint"] != built_by["fingerprint"] or mine["embedding_dim"] != built_by.get("embedding_dim"):
        raise UserInputError(
            f"Index {str(index_dir)!r} was built by model {built_by.get('name')!r} version "
            f"{built_by.get('version')} ({built_by.get('embedding_dim')}-d, {built_by.get('path')}), not by "
            f"{str(export_dir)!r} ({mine['name']!r} version {mine['version']}, {mine['embedding_dim']}-d): their "
            "embeddings are not comparable. Search with the model that built the index, or rebuild the index "
            f"with `python -m tfsim.pipelines.index --model {export_dir} --data ... --out ...`.")


def _absolute(paths: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if paths is None else np.array([str(Path(p).resolve()) for p in paths])


def build_index(model_dir: os.PathLike, data: str, out: os.PathLike, options: Optional[dict] = None,
                batch_size: int = 256, progress: bool = True) -> Path:
    """Embeds the images of `data` with the export and writes a self-tuned index at `out`.

    Args:
        model_dir: an export version folder.
        data: a data spec (`tfsim.evaluation.evaluate.load_source`).
        out: the index folder to create (refused if it exists).
        options: `scann_index.build` keyword arguments (default: `IndexConfig()`'s).

    Raises:
        UserInputError: not an export, unreadable data, or `out` exists.
    """
    from tfsim.config import IndexConfig
    from tfsim.evaluation.evaluate import embed_export, load_source

    out = Path(out)
    if out.exists():
        raise UserInputError(f"Index folder {str(out)!r} already exists; choose another --out, remove it, or add "
                             "images to it with --add.")
    info = model_info(model_dir)
    images = load_source(data)
    embeddings = embed_export(model_dir, images, batch_size, progress)
    if info["binary_codes"]:  # a hashing model: its packed codes, searched by Hamming distance
        searcher, params = scann_index.build_hamming(embeddings)
    else:
        searcher, params = scann_index.build(embeddings, info["similarity"],
                                             **{**scann_index.options(IndexConfig()), **(options or {})})
    params["built_size"] = len(images)
    return scann_index.save(out, searcher, params, images.ids, images.labels, images.class_names,
                            info["similarity"], images=images.images, paths=_absolute(images.paths), model=info)


def add_to_index(index_dir: os.PathLike, data: str, model_dir: Optional[os.PathLike] = None,
                 batch_size: int = 256, progress: bool = True) -> tuple[Path, int]:
    """Adds the images of `data` to the index at `index_dir` (see module doc).

    Returns:
        `(index_dir, number of images added)`.

    Raises:
        UserInputError: a corrupt index, another model, images already in the index, or a
            source that does not match how the index stores its images (paths or pixels).
    """
    from tfsim.evaluation.evaluate import embed_export, load_source

    index_dir = Path(index_dir)
    index = scann_index.load(index_dir)
    meta = index.meta or {}
    model_dir = Path(model_dir) if model_dir else Path((meta.get("model") or {}).get("path") or "")
    if not str(model_dir) or model_dir == Path("."):
        raise UserInputError(f"Index {str(index_dir)!r} does not record the model that built it: pass --model.")
    check_model(index_dir, meta, model_dir)
    images = load_source(data)
    already = np.isin(images.ids.astype(str), index.ids.astype(str))
    if already.any():
        raise UserInputError(f"{int(already.sum())} of the {len(images)} images are already in the index (e.g. "
                             f"{images.ids[already][0]!r}): add only new images, or rebuild the index.")
    if (index.paths is None) != (images.paths is None):
        kind = "file paths" if index.paths is not None else "pixels"
        raise UserInputError(f"Index {str(index_dir)!r} stores its images as {kind}; the new images must come from "
                             "the same kind of source (a folder or list file for paths, tfds or default for pixels).")
    names = list(index.class_names) + sorted(set(images.class_names) - set(index.class_names))
    position = {name: i for i, name in enumerate(names)}
    labels = np.array([position[images.class_names[c]] for c in images.labels], np.int32)
    embeddings = embed_export(model_dir, images, batch_size, progress)
    vectors = (embeddings if index.params.get("mode") == "hamming"
               else np.asarray(distances.get_distance(index.similarity).prepare(embeddings).numpy(), np.float32))
    index.searcher.searcher.upsert([None] * len(vectors), vectors, 256)  # new rows, appended in order
    params = dict(index.params)
    params["size"] = int(index.searcher.size())
    params["added"] = int(params.get("added", 0)) + len(vectors)
    built = int(params.get("built_size", params["size"] - params["added"]))
    if params["added"] > REBUILD_AFTER_GROWTH * built or (
            params.get("mode") == "brute_force" and params["size"] >= scann_index.BRUTE_FORCE_BELOW):
        log.warning("The index has grown from %d to %d items since it was built: rebuild it (python -m "
                    "tfsim.pipelines.index --model ... --data ... --out ...) for a tree and search settings tuned "
                    "to its size.", built, params["size"])
    scann_index.save(index_dir, index.searcher, params, np.concatenate([index.ids.astype(str), images.ids.astype(str)]),
                     np.concatenate([index.labels, labels]), names, index.similarity,
                     images=None if index.images is None else np.concatenate([index.images, images.images]),
                     paths=None if index.paths is None else np.concatenate([index.paths, _absolute(images.paths)]),
                     model=meta.get("model"), replace=True)
    return index_dir, len(vectors)
