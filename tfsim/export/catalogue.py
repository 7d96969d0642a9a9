"""Index any catalogue of images with an export, and add to it later.

    build_index(model, data, out, ids="relative")
      the export (`identity.model_info`: name, version, embedding dim, similarity, fingerprint)
      -> the images of a data spec (a folder, a list file, tfds:NAME[:SPLIT], default)
      -> embedded by the export's own `serve_images` (`export.embed.embed_export`)
      -> `float_search.build` (self-tuning; options from `float_search.build_options`), or
         `hamming.build_hamming` for a hashing export's codes
      -> `storage.save(out)`: atomic, the ids (`catalogue_ids`: paths relative to the data
         root, e.g. "Coat/img_12.png", unless `ids="path"`), absolute image paths for `search`'s
         grid (or the pixels, for images that only exist in memory), the model recorded

    add_to_index(index, data, model=None)
      embeds new images with the index's own model (a different model is refused) and inserts
      them into the ScaNN searcher without retraining it (`upsert`), then rewrites the folder
      atomically, under the index's lock. The tree and its tuned settings stay those of the first
      build: after the gallery has grown by half, rebuild (`build_index` again) for the tuned recall.

The export that adds to an index is chosen and checked by `tfsim.export.identity.index_model`:
a different model is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from tfsim import distances, locks
from tfsim.config import IndexConfig
from tfsim.data.sources import escape_name
from tfsim.data.specs import load_source
from tfsim.errors import UserInputError
from tfsim.export.embed import embed_export, export_max_pixels
from tfsim.export.identity import index_model, model_info
from tfsim.index import float_search, hamming, storage

log = logging.getLogger(__name__)
# Added items beyond this share of the built size: the tree's leaves and tuned settings no
# longer describe the gallery well, so `add_to_index` advises a rebuild.
REBUILD_AFTER_GROWTH = 0.5


def catalogue_ids(images, kind: str = "relative") -> np.ndarray:
    """The ids a catalogue is indexed with (what `search` prints and retrieval SavedModels return).

    Args:
        images: an `ImageSet`.
        kind: "relative": each file's path relative to its data root (a folder's root, a list
            file's image root, a TFDS cache), e.g. "Coat/img_12.png", or the path itself when it
            lies outside the root; images that only exist in memory keep their ids
            ("<dataset>:<row>"). "path": absolute file paths (they show the layout of the machine
            that built the index to every client of a served index: ask for them only if wanted).

    Raises:
        UserInputError: an unknown kind.
    """
    if kind not in storage.ID_KINDS:
        raise UserInputError(f"Invalid value for `ids`: expected one of {list(storage.ID_KINDS)}. "
                             f"Received: ids={kind!r}")
    if images.paths is None:
        return np.asarray(images.ids).astype(str)
    paths = [os.path.abspath(p) for p in np.asarray(images.paths).astype(str)]
    if kind == "path":
        return np.array([_text(p) for p in paths])
    report = images.report or {}
    roots = [report[key] for key in ("root", "image_root") if isinstance(report.get(key), str)]
    roots += [str(Path(c).parent) for c in report.get("cache") or [] if isinstance(c, str)]
    if not roots and paths:  # no recorded root: the folder all images share
        roots = [os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])]
    roots = [_text(os.path.abspath(r)) for r in roots]  # (compared as text: a report shows names escaped)

    common = _text(os.path.commonpath(paths)) if paths else "/"

    def relative(path: str) -> str:
        for root in roots:
            if path.startswith(root.rstrip(os.sep) + os.sep):
                return Path(os.path.relpath(path, root)).as_posix()
        # outside every recorded root (a list file's absolute paths): relative to the folder all
        # the catalogue's images share, never the machine's absolute layout
        return Path(os.path.relpath(path, common)).as_posix() if path != common else Path(path).name

    return np.array([relative(_text(p)) for p in paths])


_text = escape_name  # a file name as valid UTF-8, as the data layer's ids show it


def _absolute(paths: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if paths is None else np.array([str(Path(p).resolve()) for p in paths])


def build_index(model_dir: os.PathLike, data: str, out: os.PathLike, options: Optional[dict] = None,
                batch_size: int = 256, progress: bool = True, ids: str = "relative") -> Path:
    """Embeds the images of `data` with the export and writes a self-tuned index at `out`.

    Args:
        model_dir: an export version folder.
        data: a data spec (`tfsim.data.specs.load_source`).
        out: the index folder to create (refused if it exists).
        options: `float_search.build` keyword arguments (default: `IndexConfig()`'s), and
            "hamming_exact_below" (`IndexConfig`) for a hashing export's codes.
        ids: what the index returns as ids (`catalogue_ids`): "relative" (default) or "path".

    Raises:
        UserInputError: not an export, unreadable data, an unknown `ids`, `out` exists, or
            another process is writing it.
    """
    out = Path(out)
    if ids not in storage.ID_KINDS:
        raise UserInputError(f"Invalid value for `--ids`: expected one of {list(storage.ID_KINDS)}. "
                             f"Received: {ids!r}")
    with new_index_folder(out):
        info = model_info(model_dir)
        images = load_source(data, export_max_pixels(model_dir))  # (its images above the export's limit: skipped)
        embeddings = embed_export(model_dir, images, batch_size, progress)
        write_index(out, embeddings, catalogue_ids(images, ids), images.labels, images.class_names, info, options,
                    images=images.images, paths=_absolute(images.paths), id_kind=ids)
    return out


@contextlib.contextmanager
def new_index_folder(out: Path) -> Iterator[None]:
    """Holds the lock of the index folder `out` while a new index is written there; refuses an
    existing one, and clears what a killed build left before and after."""
    with locks.sibling_lock(out, "index"):
        storage.recover(out)  # (a .tmp-* left by an earlier build that was killed)
        if out.exists():
            raise UserInputError(f"Index folder {str(out)!r} already exists; choose another --out, remove it, or "
                                 "add images to it with --add.")
        yield
        storage.recover(out)  # incomplete leftovers of a killed build are stale now


def write_index(out: Path, embeddings: np.ndarray, ids: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                info: dict, options: Optional[dict] = None, images: Optional[np.ndarray] = None,
                paths: Optional[np.ndarray] = None, id_kind: str = "relative") -> None:
    """The self-tuned index of a catalogue's embeddings (by the export `info` describes, `model_info`)
    written at `out`: `float_search.build`, or `hamming.build_hamming` for a hashing export's codes
    (see `build_index`; the embedding shards of `tfsim.catalogue` are indexed the same way)."""
    opts = {**float_search.build_options(IndexConfig()), **(options or {})}
    exact_below = opts.pop("hamming_exact_below", IndexConfig.hamming_exact_below)
    if info["binary_codes"]:  # a hashing model: its packed codes, searched by Hamming distance
        searcher, params = hamming.build_hamming(embeddings, opts["num_neighbors"], opts["target_recall"],
                                                 exact_below)
    else:
        searcher, params = float_search.build(embeddings, info["similarity"], **opts)
    params["built_size"] = len(embeddings)
    storage.save(out, searcher, params, ids, labels, class_names, info["similarity"], images=images, paths=paths,
                 model=info, id_kind=id_kind)


def add_to_index(index_dir: os.PathLike, data: str, model_dir: Optional[os.PathLike] = None,
                 batch_size: int = 256, progress: bool = True) -> tuple[Path, int]:
    """Adds the images of `data` to the index at `index_dir` (see module doc), holding the index's
    lock (`tfsim.locks.sibling_lock`) from reading it to swapping the new folder in.

    Args:
        model_dir: the export that built the index (`index_model`: needed unless the index lives
            inside that export).

    Returns:
        `(index_dir, number of images added)`.

    Raises:
        UserInputError: a corrupt index, no or another model, images already in the index, a
            source that does not match how the index stores its images (paths or pixels), or
            another process updating the index.
    """
    index_dir = Path(index_dir)
    with locks.sibling_lock(index_dir, "index"):
        index = storage.load(index_dir)
        meta = index.meta
        model_dir = index_model(index_dir, model_dir, meta)
        images = load_source(data, export_max_pixels(model_dir))
        new_ids = catalogue_ids(images, meta["id_kind"])
        check_new(index_dir, index, new_ids, images.paths is not None)
        embeddings = embed_export(model_dir, images, batch_size, progress)
        append_embeddings(index_dir, index, new_ids, images.class_names, images.labels, embeddings,
                          images=images.images, paths=_absolute(images.paths))
    return index_dir, len(images)


def check_new(index_dir: Path, index, new_ids: np.ndarray, as_paths: bool) -> None:
    """Refuses additions to `index` whose ids it already holds, or whose images are stored
    otherwise (file paths against pixels)."""
    meta = index.meta
    already = np.isin(new_ids, index.ids.astype(str))
    if already.any():
        raise UserInputError(f"{int(already.sum())} of the {len(new_ids)} images are already in the index (by "
                             f"id, e.g. {new_ids[already][0]!r}; the index's ids are {meta['id_kind']}): add only "
                             "new images, rename them, or rebuild the index.")
    if (index.paths is not None) != as_paths:
        kind = "file paths" if index.paths is not None else "pixels"
        raise UserInputError(f"Index {str(index_dir)!r} stores its images as {kind}; the new images must come "
                             "from the same kind of source (a folder or list file for paths, tfds or default for "
                             "pixels).")


def append_embeddings(index_dir: Path, index, new_ids: np.ndarray, class_names: Sequence[str], labels: np.ndarray,
                      embeddings: np.ndarray, images: Optional[np.ndarray] = None,
                      paths: Optional[np.ndarray] = None) -> None:
    """Inserts the rows into the loaded `index` (`storage.load(index_dir)`, its lock held) and
    rewrites its folder: classes matched by name (new ones appended), the ScaNN tree and tuned
    settings kept (`upsert`; a rebuild advised past `REBUILD_AFTER_GROWTH`)."""
    meta = index.meta
    names = list(index.class_names) + sorted(set(class_names) - set(index.class_names))
    position = {name: i for i, name in enumerate(names)}
    labels = np.array([position[class_names[c]] for c in labels], np.int32)
    vectors = (embeddings if index.params["mode"] == "hamming"
               else np.asarray(distances.get_distance(index.similarity).prepare(embeddings).numpy(), np.float32))
    index.searcher.searcher.upsert([None] * len(vectors), vectors, 256)  # new rows, appended in order
    params = dict(index.params)
    params["size"] = int(index.searcher.size())
    params["added"] = int(params.get("added", 0)) + len(vectors)
    built = int(params.get("built_size", params["size"] - params["added"]))
    if params["added"] > REBUILD_AFTER_GROWTH * built or (
            params["mode"] == "brute_force" and params["size"] >= float_search.BRUTE_FORCE_BELOW):
        log.warning("The index has grown from %d to %d items since it was built: rebuild it (python -m "
                    "tfsim.pipelines.index --model ... --data ... --out ...) for a tree and search settings tuned "
                    "to its size.", built, params["size"])
    storage.save(index_dir, index.searcher, params, np.concatenate([index.ids.astype(str), new_ids]),
                 np.concatenate([index.labels, labels]), names, index.similarity,
                 images=None if index.images is None else np.concatenate([index.images, images]),
                 paths=None if index.paths is None else np.concatenate([index.paths, paths]),
                 model=meta["model"], replace=True, id_kind=meta["id_kind"])
