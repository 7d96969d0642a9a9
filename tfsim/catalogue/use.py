"""Using embedding shards without re-embedding: an index built from them, added to one, or
evaluated (the index and evaluate commands' `--embeddings DIR`).

    index_shards(shards, out)     `tfsim.export.catalogue.write_index` of the shards' rows: the
                                  same self-tuned index the index command builds from the images;
                                  with `max_items`, a `tfsim.index.ShardedIndex` of parts
    add_shards(index, shards)     the rows appended to an index built by the same export (by
                                  fingerprint), as `--add` appends images
    evaluate_shards(shards)       `tfsim.training.assessment.assess_embeddings` of the rows: the
                                  evaluate command's metrics and report
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfsim import locks
from tfsim.catalogue.shards import EmbeddingShards, dead_letters, planned_pixels, read_manifest, read_shards
from tfsim.errors import UserInputError
from tfsim.evaluation.metrics import query_mask
from tfsim.evaluation.report import write_report
from tfsim.export.catalogue import append_embeddings, check_new, new_index_folder, write_index
from tfsim.index import ShardedIndex, storage
from tfsim.training.assessment import assess_embeddings


def _pictures(shards: os.PathLike, found: EmbeddingShards) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """`(pixels, None)` for shards of images held in memory (the plan's), else `(None, paths)`:
    what an index keeps to show its results."""
    pixels = planned_pixels(shards, found.rows)
    return (pixels, None) if pixels is not None else (None, found.paths)


def index_shards(shards: os.PathLike, out: os.PathLike, options: Optional[dict] = None,
                 max_items: int = 0) -> Path:
    """The self-tuned index of a completed shards folder, written at `out`, recording the shards'
    export (as `build_index` records the export it embeds with).

    Args:
        max_items: above this many rows (0: never), a sharded index (`tfsim.index.ShardedIndex`):
            parts `out/part-00000/`, ... of whole shards, in catalogue order, at most `max_items`
            rows each (or one shard, if a shard alone holds more), each read, built and tuned on
            its own (the memory of one part at a time), searched by fan-out and merge;
            `parts.json` written last.

    Raises:
        UserInputError: not complete shards (`read_shards`), no rows, a bad `max_items`, or `out`
            exists.
    """
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0:
        raise UserInputError(f"Invalid value for `max_items`: expected an integer >= 0 (0: one index). "
                             f"Received: max_items={max_items!r}")
    out = Path(out)
    with new_index_folder(out):
        manifest = read_manifest(shards)
        if not manifest["images"]:
            raise UserInputError(f"The shards at {str(shards)!r} hold no embedded image: nothing to index.")
        if not max_items or manifest["images"] <= max_items:
            _write_part(shards, out, None, options)
            return out
        groups, rows = [[]], 0  # parts of whole shards, in catalogue order, each read on its own
        for entry in manifest["shards"]:
            if groups[-1] and rows + entry["rows"] > max_items:
                groups.append([])
                rows = 0
            groups[-1].append(entry["name"])
            rows += entry["rows"]
        work = out.with_name(f".tmp-parts-{out.name}")  # (renamed to `out` once every part is written)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            names = [f"part-{part:05d}" for part in range(len(groups))]
            for name, group in zip(names, groups):
                _write_part(shards, work / name, group, options)
            ShardedIndex.write_parts(work, names)
            os.replace(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def _write_part(shards: os.PathLike, out: Path, names: Optional[list], options: Optional[dict]) -> None:
    found = read_shards(shards, names=names)
    images, paths = _pictures(shards, found)
    write_index(out, found.embeddings, found.ids, found.labels, found.class_names, found.model, options,
                images=images, paths=paths, id_kind=found.manifest["id_kind"])


def add_shards(index_dir: os.PathLike, shards: os.PathLike) -> tuple[Path, int]:
    """Appends a completed shards folder's rows to the index at `index_dir`, which the same
    export must have built (compared by fingerprint).

    Returns:
        `(index_dir, rows added)`.

    Raises:
        UserInputError: another export, ids already in the index, images stored otherwise, ids of
            another kind, or another process updating the index.
    """
    index_dir = Path(index_dir)
    with locks.sibling_lock(index_dir, "index"):
        index = storage.load(index_dir)
        found = read_shards(shards)
        built_by = (index.meta.get("model") or {})
        if built_by.get("fingerprint") != found.model["fingerprint"]:
            raise UserInputError(f"Index {str(index_dir)!r} was built by model {built_by.get('name')!r} version "
                                 f"{built_by.get('version')}, the shards at {str(shards)!r} by "
                                 f"{found.model['name']!r} version {found.model['version']} (another fingerprint): "
                                 "embeddings of two models cannot share an index.")
        if index.meta["id_kind"] != found.manifest["id_kind"]:
            raise UserInputError(f"Index {str(index_dir)!r} has {index.meta['id_kind']} ids, the shards "
                                 f"{found.manifest['id_kind']} ones: embed with --ids {index.meta['id_kind']}.")
        images, paths = _pictures(shards, found)
        check_new(index_dir, index, found.ids, paths is not None)
        append_embeddings(index_dir, index, found.ids, found.class_names, found.labels, found.embeddings,
                          images=images, paths=paths)
    return index_dir, len(found)


def evaluate_shards(shards: os.PathLike, ks: Sequence[int] = (1, 2, 4, 8), out: Optional[os.PathLike] = None,
                    ann: bool = False, progress: bool = True) -> dict:
    """Retrieval metrics of a completed shards folder's rows (each row queries all the others, or
    a list file's query rows its gallery rows), as the evaluate command computes them from images;
    "skipped_files" are the job's dead letters. Written to `out` when given."""
    found = read_shards(shards)
    if len(np.unique(found.labels)) < 2:
        raise UserInputError(f"The shards at {str(shards)!r} hold fewer than 2 classes: retrieval metrics need 2 "
                             "or more.")
    mask = query_mask(found.splits) if (found.splits != "").any() else None
    model = found.model
    metrics = assess_embeddings(found.embeddings, found.labels, list(found.class_names), model["similarity"], mask, ks,
                                bool(model.get("binary_codes")), ann, progress)
    metrics["skipped_files"] = [{"path": b.get("path") or b["id"], "reason": b["reason"]} for b in dead_letters(shards)]
    metrics.update(protocol="leave_one_out" if mask is None else "query_gallery", similarity=model["similarity"],
                   model=model["path"], model_kind="export", model_details=model, data=found.manifest["data"],
                   embeddings=str(Path(shards).resolve()), query=None, gallery=None)
    if out is not None:
        write_report(Path(out), metrics, ks)
    return metrics
