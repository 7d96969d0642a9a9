"""An export's identity: what identifies the function it computes, and which export goes with an index.

An index never names the model that is run with it: a model is a program, and index.json is
data anyone may have written. `index_model` picks the model: the export the index lives in
(`<export>/assets.extra/tfsim/index/`, `owning_export`), or the one the user names;
`check_model` then refuses it unless the fingerprint of its files (`model_fingerprint`:
saved_model.pb, variables/, assets/; never metadata the model carries about itself) is the one
the index recorded (`model_info`, written into index.json when the index was built): vectors of
another model would not be comparable and the results would be silently wrong.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

from tfsim.errors import UserInputError
from tfsim.export.saved_model import read_export
from tfsim.index import storage


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

    `index_meta` is the index's validated index.json (`tfsim.index.storage.read_meta`): its model
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
    index_meta = index_meta if index_meta is not None else storage.read_meta(index_dir)
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
