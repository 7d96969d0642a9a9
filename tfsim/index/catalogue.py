"""Index any catalogue of images with an export, and add to it later.

    build_index(model, data, out, ids="relative")
      the export (`model_info`: name, version, embedding dim, similarity, fingerprint)
      -> the images of a data spec (a folder, a list file, tfds:NAME[:SPLIT], default)
      -> embedded by the export's own `serve_images` (`export.embed.embed_export`)
      -> `scann_index.build` (self-tuning; `options` as in `scann_index.options`)
      -> `scann_index.save(out)`: atomic, the ids (`catalogue_ids`: paths relative to the data
         root, e.g. "Coat/img_12.png", unless `ids="path"`), absolute image paths for `search`'s
         grid (or the pixels, for images that only exist in memory), the model recorded

    add_to_index(index, data, model=None)
      embeds new images with the index's own model (a different model is refused) and inserts
      them into the ScaNN searcher without retraining it (`upsert`), then rewrites the folder
      atomically, under the index's lock. The tree and its tuned settings stay those of the first
      build: after the gallery has grown by half, rebuild (`build_index` again) for the tuned recall.

An index never names the model that is run with it: a model is a program, and index.json is
data anyone may have written. `index_model` picks the model: the export the index lives in
(`<export>/assets.extra/tfsim/index/`), or the one the user names; `check_model` then refuses it
unless the fingerprint of its files (`model_fingerprint`: saved_model.pb, variables/, assets/;
never metadata the model carries about itself) is the one the index recorded: vectors of another
model would not be comparable and the results would be silently wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from tfsim import distances
from tfsim.data.sources import escape_name
from tfsim.errors import UserInputError
from tfsim.index import scann_index

log = logging.getLogger(__name__)
# Added items beyond this share of the built size: the tree's leaves and tuned settings no
# longer describe the gallery well, so `add_to_index` advises a rebuild.
REBUILD_AFTER_GROWTH = 0.5


def model_fingerprint(export_dir: os.PathLike) -> str:
    """SHA-256 of a SavedModel's own files: saved_model.pb and every file under variables/ and
    assets/ (relative names, sizes and bytes). What identifies the function an export computes;
    `assets.extra/` (tfsim's metadata, the index, warm-up records) is left out."""
    export_dir = Path(export_dir)
    files = [export_dir / "saved_model.pb"] + sorted(
        f for sub in ("variables", "assets") for f in (export_dir / sub).rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(export_dir).as_posix()}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return "sha256-files:" + digest.hexdigest()


def model_info(export_dir: os.PathLike) -> dict:
    """What identifies an export's embeddings: recorded in an index, compared by `check_model`.
    The fingerprint comes from the model's files; the rest (name, version, path) is information."""
    from tfsim.export import read_export

    export_dir = Path(export_dir)
    meta = read_export(export_dir)
    return {"path": str(export_dir.resolve()), "name": meta.get("name"), "version": meta.get("version"),
            "embedding_dim": int(meta["embedding_dim"]), "similarity": meta.get("similarity", "cosine"),
            "fingerprint": model_fingerprint(export_dir),
            "binary_codes": bool(meta.get("binary_codes", False))}


def _built_by(built_by: dict) -> str:
    where = f", recorded at {built_by['path']!r}" if built_by.get("path") else ""  # (as repr: data, shown)
    return (f"model {built_by.get('name')!r} version {built_by.get('version')} ({built_by.get('embedding_dim')}-d"
            f"{where})")


def check_model(index_dir: os.PathLike, index_meta: dict, export_dir: os.PathLike,
                info: Optional[dict] = None) -> dict:
    """Refuses to use the index at `index_dir` with an export that did not build it.

    `index_meta` is the index's validated index.json (`scann_index.read_meta`): its model
    fingerprint is always there, and always compared.

    Args:
        info: `model_info(export_dir)` if already computed.

    Returns:
        `model_info(export_dir)`.

    Raises:
        UserInputError: the export's fingerprint or embedding dim differs from the index's model.
    """
    built_by = index_meta["model"]
    mine = info or model_info(export_dir)
    if mine["fingerprint"] != built_by["fingerprint"] or mine["embedding_dim"] != built_by["embedding_dim"]:
        raise UserInputError(
            f"Index {str(index_dir)!r} was built by {_built_by(built_by)}, not by {str(export_dir)!r} "
            f"({mine['name']!r} version {mine['version']}, {mine['embedding_dim']}-d; the fingerprints of their "
            "files differ): their embeddings are not comparable. Search with the model that built the index, or "
            f"rebuild the index with `python -m tfsim.pipelines.index --model {export_dir} --data ... --out ...`.")
    return mine


def owning_export(index_dir: os.PathLike) -> Optional[Path]:
    """The export an index lives in (`<export>/assets.extra/tfsim/index/`), or None."""
    # The path as given, links not followed: a link named `idx` pointing into some export's
    # folder does not make that export the model (pass --model to name it).
    real = Path(os.path.abspath(index_dir))
    if real.parts[-3:] != ("assets.extra", "tfsim", "index"):
        return None
    export = real.parents[2]
    return export if (export / "saved_model.pb").is_file() else None


def index_model(index_dir: os.PathLike, model_dir: Optional[os.PathLike] = None,
                index_meta: Optional[dict] = None) -> Path:
    """The export to embed with for the index at `index_dir`, checked against it (`check_model`).

    It is the export the index lives in, or `model_dir` (the user's `--model`); with both, they
    must be the same model (by the fingerprint of their files). A model path written in the
    index is never used: it is only shown, as information, when neither is there.

    Raises:
        UserInputError: neither, two different models, or a model that did not build the index.
    """
    index_meta = index_meta if index_meta is not None else scann_index.read_meta(index_dir)
    owner = owning_export(index_dir)
    if model_dir is None and owner is None:
        raise UserInputError(
            f"Index {str(index_dir)!r} is not inside an export, so the model to embed the images with must be "
            f"given: pass --model EXPORT (the index says it was built by {_built_by(index_meta['model'])}; tfsim "
            "never runs a model named inside an index, since a model is a program and an index is data).")
    model = Path(model_dir) if model_dir is not None else owner
    info = model_info(model)
    if owner is not None and model.resolve() != owner:
        if info["fingerprint"] != model_fingerprint(owner):
            raise UserInputError(
                f"Index {str(index_dir)!r} belongs to the export {str(owner)!r}, but --model names {str(model)!r}, "
                "a different model: drop --model to use the export's own, or pass the index built by "
                f"{str(model)!r}.")
    check_model(index_dir, index_meta, model, info)
    return model


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
    if kind not in scann_index.ID_KINDS:
        raise UserInputError(f"Invalid value for `ids`: expected one of {list(scann_index.ID_KINDS)}. "
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
        options: `scann_index.build` keyword arguments (default: `IndexConfig()`'s).
        ids: what the index returns as ids (`catalogue_ids`): "relative" (default) or "path".

    Raises:
        UserInputError: not an export, unreadable data, an unknown `ids`, `out` exists, or
            another process is writing it.
    """
    from tfsim import locks
    from tfsim.config import IndexConfig
    from tfsim.data.specs import load_source
    from tfsim.export.embed import embed_export, export_max_pixels

    out = Path(out)
    if ids not in scann_index.ID_KINDS:
        raise UserInputError(f"Invalid value for `--ids`: expected one of {list(scann_index.ID_KINDS)}. "
                             f"Received: {ids!r}")
    with locks.sibling_lock(out, "index"):
        scann_index.recover(out)  # (a .tmp-* left by an earlier build that was killed)
        if out.exists():
            raise UserInputError(f"Index folder {str(out)!r} already exists; choose another --out, remove it, or "
                                 "add images to it with --add.")
        info = model_info(model_dir)
        images = load_source(data, export_max_pixels(model_dir))  # (its images above the export's limit: skipped)
        embeddings = embed_export(model_dir, images, batch_size, progress)
        if info["binary_codes"]:  # a hashing model: its packed codes, searched by Hamming distance
            searcher, params = scann_index.build_hamming(embeddings)
        else:
            searcher, params = scann_index.build(embeddings, info["similarity"],
                                                 **{**scann_index.options(IndexConfig()), **(options or {})})
        params["built_size"] = len(images)
        scann_index.save(out, searcher, params, catalogue_ids(images, ids), images.labels, images.class_names,
                         info["similarity"], images=images.images, paths=_absolute(images.paths), model=info,
                         id_kind=ids)
        scann_index.recover(out)  # incomplete leftovers of a killed build are stale now
    return out


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
    from tfsim import locks
    from tfsim.data.specs import load_source
    from tfsim.export.embed import embed_export, export_max_pixels

    index_dir = Path(index_dir)
    with locks.sibling_lock(index_dir, "index"):
        index = scann_index.load(index_dir)
        meta = index.meta
        model_dir = index_model(index_dir, model_dir, meta)
        images = load_source(data, export_max_pixels(model_dir))
        new_ids = catalogue_ids(images, meta["id_kind"])
        already = np.isin(new_ids, index.ids.astype(str))
        if already.any():
            raise UserInputError(f"{int(already.sum())} of the {len(images)} images are already in the index (by "
                                 f"id, e.g. {new_ids[already][0]!r}; the index's ids are {meta['id_kind']}): add only "
                                 "new images, rename them, or rebuild the index.")
        if (index.paths is None) != (images.paths is None):
            kind = "file paths" if index.paths is not None else "pixels"
            raise UserInputError(f"Index {str(index_dir)!r} stores its images as {kind}; the new images must come "
                                 "from the same kind of source (a folder or list file for paths, tfds or default for "
                                 "pixels).")
        names = list(index.class_names) + sorted(set(images.class_names) - set(index.class_names))
        position = {name: i for i, name in enumerate(names)}
        labels = np.array([position[images.class_names[c]] for c in images.labels], np.int32)
        embeddings = embed_export(model_dir, images, batch_size, progress)
        vectors = (embeddings if index.params["mode"] == "hamming"
                   else np.asarray(distances.get_distance(index.similarity).prepare(embeddings).numpy(), np.float32))
        index.searcher.searcher.upsert([None] * len(vectors), vectors, 256)  # new rows, appended in order
        params = dict(index.params)
        params["size"] = int(index.searcher.size())
        params["added"] = int(params.get("added", 0)) + len(vectors)
        built = int(params.get("built_size", params["size"] - params["added"]))
        if params["added"] > REBUILD_AFTER_GROWTH * built or (
                params["mode"] == "brute_force" and params["size"] >= scann_index.BRUTE_FORCE_BELOW):
            log.warning("The index has grown from %d to %d items since it was built: rebuild it (python -m "
                        "tfsim.pipelines.index --model ... --data ... --out ...) for a tree and search settings tuned "
                        "to its size.", built, params["size"])
        scann_index.save(index_dir, index.searcher, params, np.concatenate([index.ids.astype(str), new_ids]),
                         np.concatenate([index.labels, labels]), names, index.similarity,
                         images=None if index.images is None else np.concatenate([index.images, images.images]),
                         paths=None if index.paths is None else np.concatenate([index.paths,
                                                                                _absolute(images.paths)]),
                         model=meta["model"], replace=True, id_kind=meta["id_kind"])
    return index_dir, len(vectors)
