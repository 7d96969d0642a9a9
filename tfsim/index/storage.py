"""Storage of an index: one folder, written atomically, checked when read, repaired after a crash.

    <index>/
      index.json        format, similarity, ScaNN parameters (tuned settings and measured recall),
                        size, class names, the ids' kind, the model that embedded the gallery
                        (its fingerprint; information about it, never a path that is loaded),
                        the size and SHA-256 of every other file, and `digest`: the SHA-256 of
                        index.json's own canonical content (`load` validates index.json against
                        its schema, its digest and the files, and refuses a damaged index)
      gallery.npz       ids [G] str, labels [G] int32, and optionally the gallery
                        images [G, H, W, C] uint8 (when they were in memory) or paths [G]
                        (absolute, or relative to the index folder, never to the current directory)
      scann/            ScaNN's own serialised searcher (`searcher.serialize`), or for a
                        hashing model's Hamming index (`tfsim.index.hamming.build_hamming`) the
                        packed codes (codes.npy, uint8 [G, bits / 8]) and, for an inverted
                        file, its lists' centroids (centroids.npy, uint8 [L, bits / 8]) and each
                        code's list (lists.npy, int64 [G]): plain arrays, never a faiss file

A new index is built under a temporary name beside its path, then renamed. Updates
(`save(replace=True)`, under the caller's `sibling_lock`) swap folders by two renames; a crash
between them leaves `.old-<name>-*` and `.tmp-<name>-*` beside the path and no index at it.
`recover` (run by `read_meta`, so by every command that opens the index) restores a complete,
verified one to the name and removes the stale ones, and logs what it did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfsim import distances, locks
from tfsim.errors import UserInputError
from tfsim.index.float_search import GalleryIndex, scann_ops
from tfsim.index.hamming import HammingSearcher

log = logging.getLogger(__name__)
# v3 checks index.json by its own digest and schema, and names the model by its files' fingerprint.
FORMAT = "tfsim.scann_index.v3"
READABLE_FORMATS = (FORMAT,)
# Formats this tfsim refuses (rebuild): their index.json was not covered by a checksum (v1 had no
# checksums at all) and their model fingerprint was metadata the model carried about itself.
OLDER_FORMATS = ("tfsim.scann_index.v1", "tfsim.scann_index.v2")
MODES = ("brute_force", "tree_ah", "hamming")
HAMMING_ENGINES = ("exact", "ivf")  # `tfsim.index.hamming.build_hamming`
# What a gallery id is: "relative" (the image's path relative to the data root, or "<dataset>:<row>"
# for images that only exist in memory) or "path" (the absolute path, asked for explicitly).
ID_KINDS = ("relative", "path")


def _make_relocatable(scann_dir: Path) -> None:
    """Rewrites ScaNN's asset paths to bare file names.

    `searcher.serialize` records absolute paths in `scann_assets.pbtxt`, so an index
    that is moved (the atomic rename, an export copied to a serving host) would no
    longer load. ScaNN resolves relative paths against the folder it loads from.
    """
    pbtxt = scann_dir / "scann_assets.pbtxt"
    text = re.sub(r'asset_path: "[^"]*/([^/"]+)"', r'asset_path: "\1"', pbtxt.read_text())
    pbtxt.write_text(text)


def _file_digests(folder: Path) -> dict:
    """{relative path: [bytes, sha256]} of every file under `folder` but index.json."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "index.json"):
        digest = hashlib.sha256()
        with open(f, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        out[f.relative_to(folder).as_posix()] = [f.stat().st_size, digest.hexdigest()]
    return out


def meta_digest(meta: dict) -> str:
    """SHA-256 of index.json's canonical content (sorted keys, no spaces), `digest` itself left out."""
    body = {key: value for key, value in meta.items() if key != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save(path: os.PathLike, searcher, params: dict, ids: Sequence[str], labels: np.ndarray,
         class_names: Sequence[str], similarity: str, images: Optional[np.ndarray] = None,
         paths: Optional[np.ndarray] = None, atomic: bool = True, model: Optional[dict] = None,
         replace: bool = False, id_kind: str = "relative") -> Path:
    """Writes the index folder at `path` (see module doc); refuses to overwrite unless `replace`.

    With `atomic`, everything is written into a sibling temporary folder renamed at
    the end, so a crash never leaves a half-written index under `path`; with `replace`, the
    old folder is swapped out only once the new one is complete (and removed after; a crash
    between the renames is undone by `recover`). The caller holds `sibling_lock(path)` while
    replacing. index.json records each file's size and SHA-256, its own digest (checked by
    `load`), `id_kind` (`ID_KINDS`) and `model`: what embedded the gallery (name, version,
    embedding_dim, fingerprint of its files; see `tfsim.export.identity.model_info`).
    """
    target = Path(path)
    if target.exists() and not replace:
        raise UserInputError(f"Index folder {str(target)!r} already exists; choose another path or remove it.")
    work = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}") if atomic else target
    work.mkdir(parents=True)
    try:
        (work / "scann").mkdir()
        searcher.serialize(str(work / "scann"))
        if params.get("mode") != "hamming":
            _make_relocatable(work / "scann")
        arrays = {"ids": np.asarray(ids).astype(str), "labels": np.asarray(labels, np.int32)}
        if images is not None:
            arrays["images"] = np.asarray(images, np.uint8)
        if paths is not None:
            arrays["paths"] = np.asarray(paths).astype(str)
        np.savez_compressed(work / "gallery.npz", **arrays)
        meta = {"format": FORMAT, "similarity": similarity, "params": params,
                "class_names": list(class_names), "size": int(len(arrays["ids"])), "model": model,
                "id_kind": id_kind, "files": _file_digests(work)}
        meta["digest"] = meta_digest(meta)
        _check_meta(work, meta)  # what is written is what `load` accepts
        (work / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
        if atomic and replace and target.exists():
            old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
            os.rename(target, old)
            os.rename(work, target)
            shutil.rmtree(old, ignore_errors=True)
        elif atomic:
            os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _corrupt(path: Path, problem: str) -> UserInputError:
    return UserInputError(f"Index {str(path)!r} is corrupt: {problem}. Searching it could return wrong results; "
                          "rebuild it with `python -m tfsim.pipelines.index`.")


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_meta(path: Path, meta) -> None:
    """Validates index.json's content against its schema (types, known values, consistency).

    Raises:
        UserInputError: the first field that is wrong, what it holds and what was expected.
    """
    def need(ok: bool, field: str, expected: str, value=None) -> None:
        if not ok:
            shown = repr(value)
            raise _corrupt(path, f"index.json's `{field}` is {shown[:80] + '...' if len(shown) > 80 else shown}; "
                                 f"expected {expected}")

    need(isinstance(meta, dict), "(top level)", "a JSON object", type(meta).__name__)
    for key in ("similarity", "params", "class_names", "size", "model", "id_kind", "files", "digest"):
        if key not in meta:
            raise _corrupt(path, f"index.json has no `{key}`")
    need(meta["similarity"] in distances.DISTANCES, "similarity", f"one of {sorted(distances.DISTANCES)}",
         meta["similarity"])
    need(meta["id_kind"] in ID_KINDS, "id_kind", f"one of {list(ID_KINDS)}", meta["id_kind"])
    names = meta["class_names"]
    need(isinstance(names, list) and len(names) > 0 and all(isinstance(n, str) for n in names),
         "class_names", "a non-empty list of strings", names)
    need(len(set(names)) == len(names), "class_names", "distinct names", names)
    need(_is_int(meta["size"], 1), "size", "an integer >= 1", meta["size"])
    need(isinstance(meta["digest"], str), "digest", "a SHA-256 hex string", meta["digest"])

    params = meta["params"]
    need(isinstance(params, dict), "params", "an object", params)
    need(params.get("mode") in MODES, "params.mode", f"one of {list(MODES)}", params.get("mode"))
    need(params.get("size") == meta["size"], "params.size", f"the index's size, {meta['size']}", params.get("size"))
    need(_is_int(params.get("num_neighbors"), 1), "params.num_neighbors", "an integer >= 1",
         params.get("num_neighbors"))
    for key in ("added", "built_size"):
        if key in params:
            need(_is_int(params[key]), f"params.{key}", "an integer >= 0", params[key])
    if params["mode"] == "tree_ah":
        for key in ("num_leaves", "num_leaves_to_search", "reorder"):
            need(_is_int(params.get(key), 1), f"params.{key}", "an integer >= 1", params.get(key))
        for key in ("measured_recall", "target_recall", "queries_per_second"):
            need(_is_number(params.get(key)), f"params.{key}", "a number", params.get(key))
        tuning = params.get("tuning")
        need(isinstance(tuning, dict) and _is_int(tuning.get("sample"), 1), "params.tuning",
             "an object with `sample`, an integer >= 1", tuning)
    elif params["mode"] == "hamming":
        need(_is_int(params.get("code_bits"), 8) and params["code_bits"] % 8 == 0, "params.code_bits",
             "a positive multiple of 8", params.get("code_bits"))
        engine = params.get("engine", "exact")  # (indexes written before the inverted file: exact)
        need(engine in HAMMING_ENGINES, "params.engine", f"one of {list(HAMMING_ENGINES)}", engine)
        if engine == "ivf":
            need(_is_int(params.get("num_lists"), 1), "params.num_lists", "an integer >= 1", params.get("num_lists"))
            need(_is_int(params.get("num_lists_to_search"), 1)
                 and params["num_lists_to_search"] <= params["num_lists"], "params.num_lists_to_search",
                 "an integer in [1, params.num_lists]", params.get("num_lists_to_search"))

    model = meta["model"]
    need(isinstance(model, dict), "model", "an object describing the model that built the index", model)
    need(isinstance(model.get("fingerprint"), str) and len(model["fingerprint"]) > 0, "model.fingerprint",
         "the fingerprint of the model's files (a string)", model.get("fingerprint"))
    need(_is_int(model.get("embedding_dim"), 1), "model.embedding_dim", "an integer >= 1", model.get("embedding_dim"))
    for key in ("name", "path"):
        need(model.get(key) is None or isinstance(model[key], str), f"model.{key}", "a string or null", model.get(key))
    need(model.get("version") is None or _is_int(model["version"]), "model.version", "an integer or null",
         model.get("version"))

    files = meta["files"]
    need(isinstance(files, dict) and "gallery.npz" in files, "files",
         "an object listing every file of the index with its size and SHA-256, gallery.npz included", files)
    for name, entry in files.items():
        parts = name.split("/")
        need(not name.startswith("/") and all(part not in ("", ".", "..") for part in parts) and name != "index.json",
             "files", "names of files inside the index folder (relative, no '..')", name)
        need(isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0])
             and isinstance(entry[1], str) and re.fullmatch(r"[0-9a-f]{64}", entry[1]) is not None,
             f"files[{name!r}]", "[size in bytes, SHA-256 hex]", entry)


def leftovers(path: os.PathLike) -> list[Path]:
    """The `.tmp-<name>-*` and `.old-<name>-*` folders an interrupted write or update of the index
    at `path` left beside it (`save`)."""
    path = Path(path)
    pattern = re.compile(rf"\.(tmp|old)-{re.escape(path.name)}-[0-9a-f]{{8}}")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def _complete(candidate: Path) -> Optional[str]:
    """None if `candidate` is a complete index that passes every check, else why not (a few words)."""
    if not (candidate / "index.json").is_file():
        return "incomplete: no index.json"
    try:
        verify(candidate, _parse_meta(candidate))
    except UserInputError:
        return "damaged"
    return None


def recover(path: os.PathLike) -> list[str]:
    """Repairs what an interrupted `save` left beside the index at `path`, and says what it did.

    With no index at `path`, the newest complete, verified `.tmp-<name>-*` (an update that had
    finished writing; the crash came between the two renames) or else `.old-<name>-*` (the index
    before the update) is renamed to `path`; once an index is at `path`, the other leftovers are
    stale and removed. Leftovers that hold no complete index while `path` has none are kept (they
    may be all there is) and `read_meta`'s error names them. Runs under `sibling_lock(path)`; while
    another process holds it (an update in progress), nothing is touched.

    Returns:
        One line per action taken (also logged as warnings).

    Raises:
        LockHeld: no index at `path` while another process is updating it.
    """
    path = Path(path)
    if not leftovers(path):
        return []
    done: list[str] = []
    try:
        lock = locks.sibling_lock(path, "index").acquire()
    except locks.LockHeld:
        if (path / "index.json").is_file():
            return []  # an update in progress: its temporary folder is not a leftover
        raise
    except OSError as err:  # e.g. a read-only folder: leave it as it is
        if (path / "index.json").is_file():
            log.warning("Leftovers of an interrupted update beside %s were not cleaned up (%s).", path, err)
            return []
        raise
    try:
        found = leftovers(path)
        if not path.exists():
            by_age = lambda p: p.stat().st_mtime  # noqa: E731
            newer = sorted((p for p in found if p.name.startswith(".tmp-")), key=by_age, reverse=True)
            older = sorted((p for p in found if p.name.startswith(".old-")), key=by_age, reverse=True)
            for candidate in newer + older:
                if _complete(candidate) is None:
                    os.rename(candidate, path)
                    what = ("the update it had finished writing" if candidate.name.startswith(".tmp-")
                            else "the index as it was before the update")
                    done.append(f"Index {str(path)!r} was missing after an interrupted update: restored {what} "
                                f"from {candidate.name}.")
                    break
        if path.exists():
            for stale in leftovers(path):
                shutil.rmtree(stale, ignore_errors=True)
                done.append(f"Removed {stale.name}, left beside index {str(path)!r} by an interrupted write.")
    finally:
        lock.release()
    for line in done:
        log.warning("%s", line)
    return done


def _parse_meta(path: Path) -> dict:
    """index.json of `path`, checked against its format, schema and digest."""
    meta_file = path / "index.json"
    if not meta_file.is_file():
        found = leftovers(path)
        extra = ""
        if found:
            extra = (" Beside it are leftovers of an interrupted update that hold no complete index: "
                     + "; ".join(f"{p.name} ({_complete(p) or 'complete'})" for p in found[:3])
                     + ("; ..." if len(found) > 3 else "")
                     + ". Rebuild the index, or restore one of them by hand if you know it is good.")
        raise UserInputError(
            f"{str(path)!r} is not a tfsim index: expected a folder with index.json, gallery.npz and "
            f"scann/, as written by `python -m tfsim.pipelines.index` or the train pipeline.{extra}")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise _corrupt(path, "index.json is not valid JSON") from None
    if isinstance(meta, dict) and meta.get("format") in OLDER_FORMATS:
        raise UserInputError(
            f"Index {str(path)!r} has the older format {meta['format']!r}, whose index.json and model fingerprint "
            f"this tfsim cannot check; rebuild it with `python -m tfsim.pipelines.index` (format {FORMAT!r}).")
    if isinstance(meta, dict) and meta.get("format") not in READABLE_FORMATS:
        raise UserInputError(f"{str(path)!r} has index format {meta.get('format')!r}; expected one of "
                             f"{list(READABLE_FORMATS)}. Rebuild it with `python -m tfsim.pipelines.index`.")
    _check_meta(path, meta)
    if meta["digest"] != meta_digest(meta):
        raise _corrupt(path, "index.json was changed after it was written (its content does not match its digest)")
    return meta


def read_meta(path: os.PathLike, recover_leftovers: bool = True) -> dict:
    """index.json of an index folder, validated (format, schema, digest), after `recover`ing what
    an interrupted update left beside it.

    Raises:
        UserInputError: `path` is not a tfsim index, or its index.json is damaged or was edited.
    """
    path = Path(path)
    if recover_leftovers:
        recover(path)
    return _parse_meta(path)


def verify(path: os.PathLike, meta: dict, checksums: bool = True) -> None:
    """Checks every file index.json lists is there with its size (and SHA-256 with `checksums`),
    and that it lists every file of the folder and those its mode needs.

    Raises:
        UserInputError: a file is missing, truncated or altered: the index would give wrong
            results, so it is refused.
    """
    path = Path(path)
    expected = meta["files"]
    present = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                     if (p.is_file() or p.is_symlink()) and p.name != "index.json")
    unlisted = [name for name in present if name not in expected]
    if unlisted:  # a file the checksum list does not cover would be read unchecked
        raise _corrupt(path, f"{unlisted[0]} is not in index.json's list of files (a list that leaves files out "
                             "switches their check off)")
    params = meta["params"]
    needed = (("scann/scann_assets.pbtxt",) if params["mode"] != "hamming"
              else ("scann/codes.npy", "scann/centroids.npy", "scann/lists.npy") if params.get("engine") == "ivf"
              else ("scann/codes.npy",))
    for name in ("gallery.npz", *needed):
        if name not in expected:
            raise _corrupt(path, f"index.json's list of files leaves out {name}")
    found = _file_digests(path) if checksums else {
        name: [(path / name).stat().st_size, None] for name in expected if (path / name).is_file()}
    for name, (size, digest) in expected.items():
        problem = None
        if name not in found:
            problem = "is missing"
        elif found[name][0] != size:
            problem = f"has {found[name][0]} bytes where {size} were written (truncated or altered)"
        elif checksums and found[name][1] != digest:
            problem = "does not have the content that was written (altered or damaged)"
        if problem:
            raise _corrupt(path, f"{name} {problem}")


def _resolve_paths(path: Path, paths: np.ndarray) -> np.ndarray:
    """Gallery paths as recorded, relative ones resolved against the index folder (never the
    current directory)."""
    base = os.path.abspath(path)
    return np.array([p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in paths.astype(str)])


def load(path: os.PathLike, checksums: bool = True, recover_leftovers: bool = True) -> GalleryIndex:
    """Loads an index folder written by `save`, after `verify`ing its files and checking that the
    gallery matches index.json (one id, label and path or image per item, labels naming classes).

    Raises:
        UserInputError: `path` is not a tfsim index, or it is corrupt or truncated.
    """
    path = Path(path)
    meta = read_meta(path, recover_leftovers)
    verify(path, meta, checksums)
    if meta["params"]["mode"] != "hamming":  # ScaNN opens the assets its pbtxt names: only files of this folder
        pbtxt = path / "scann" / "scann_assets.pbtxt"
        named = re.findall(r'asset_path: "([^"]*)"', pbtxt.read_text(errors="replace")) if pbtxt.is_file() else []
        if any("/" in name or name in ("", ".", "..") for name in named):
            raise _corrupt(path, "scann/scann_assets.pbtxt names files outside the index folder")
    try:
        searcher = (HammingSearcher.load(path / "scann", meta["params"])
                    if meta["params"]["mode"] == "hamming"
                    else scann_ops().load_searcher(str(path / "scann")))
        with np.load(path / "gallery.npz") as npz:  # (no pickles: allow_pickle stays False)
            index = GalleryIndex(searcher=searcher, ids=npz["ids"], labels=npz["labels"],
                                 class_names=tuple(meta["class_names"]), similarity=meta["similarity"],
                                 params=meta["params"], images=npz["images"] if "images" in npz else None,
                                 paths=npz["paths"] if "paths" in npz else None, meta=meta)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise UserInputError(f"Index {str(path)!r} cannot be read ({err}); rebuild it with "
                             "`python -m tfsim.pipelines.index`.") from None
    size = meta["size"]
    problem = None
    if index.ids.ndim != 1 or index.ids.dtype.kind != "U" or len(index.ids) != size:
        problem = f"gallery.npz holds {index.ids.shape} ids of type {index.ids.dtype} for an index of {size} items"
    elif index.labels.ndim != 1 or index.labels.dtype.kind not in "iu" or len(index.labels) != size:
        problem = f"gallery.npz holds {index.labels.shape} labels of type {index.labels.dtype} for {size} items"
    elif size and (index.labels.min() < 0 or index.labels.max() >= len(index.class_names)):
        problem = (f"its labels run from {int(index.labels.min())} to {int(index.labels.max())}, but index.json "
                   f"names {len(index.class_names)} classes")
    elif (index.images is None) == (index.paths is None):
        problem = "gallery.npz must hold either the images or their paths"
    elif len(index.images if index.images is not None else index.paths) != size:
        problem = f"gallery.npz's images or paths are not one per item ({size})"
    elif searcher.size() != size:
        problem = f"the searcher holds {searcher.size()} vectors for {size} ids"
    if problem:
        raise UserInputError(f"Index {str(path)!r} is inconsistent: {problem}; rebuild it with "
                             "`python -m tfsim.pipelines.index`.")
    if index.paths is not None:
        index.paths = _resolve_paths(path, index.paths)
    return index
