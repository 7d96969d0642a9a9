"""A ScaNN index over a gallery of embeddings, with the row -> image id/label mapping.

On disk (a folder, written atomically: built under a temporary name, then renamed):

    <index>/
      index.json        format, similarity, ScaNN parameters, size, class names
      gallery.npz       ids [G] str, labels [G] int32, and optionally the gallery
                        images [G, H, W, C] uint8 (when they were in memory) or paths [G]
      scann/            ScaNN's own serialised searcher (`searcher.serialize`)

Search results are oriented so that larger scores are closer, whatever the
similarity (`tfsim.distances.DISTANCES`), and returned as the same `Neighbors` as `evaluation.exact_knn`;
that is what lets tests compare ScaNN to brute force by recall and by scores.

Parameters (ScaNN's recommendations): galleries under `BRUTE_FORCE_BELOW` items are
scored exhaustively; larger ones use a k-means tree with ~sqrt(G) leaves, searching
~20% of them (recall >= 0.95 in tests), anisotropic quantisation (2 dims per block, threshold 0.2) and exact
re-scoring of the top `reorder` candidates.
"""

from __future__ import annotations

import dataclasses
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

from tfsim import distances
from tfsim.errors import UserInputError
from tfsim.evaluation.knn import Neighbors

log = logging.getLogger(__name__)
FORMAT = "tfsim.scann_index.v1"
BRUTE_FORCE_BELOW = 1000


def _scann():
    try:
        from scann import scann_ops_pybind
    except ImportError as err:  # pragma: no cover - scann is a hard dependency
        raise ImportError("tfsim's index needs `scann==1.4.2` (pip install scann==1.4.2).") from err
    return scann_ops_pybind


@dataclasses.dataclass
class GalleryIndex:
    """A loaded (or freshly built) index and its gallery metadata."""

    searcher: object
    ids: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    similarity: str
    params: dict
    images: Optional[np.ndarray] = None
    paths: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def search(self, queries: np.ndarray, k: int) -> Neighbors:
        """Top-k gallery rows of each query.

        Args:
            queries: float `[Q, D]` (raw embeddings; normalised here if the similarity needs it).
            k: neighbours, at most the gallery size.

        Returns:
            `Neighbors(indices [Q, k] gallery rows, scores [Q, k])`, best first, larger = closer.
        """
        sim = distances.get_distance(self.similarity)
        q = np.asarray(sim.prepare(np.atleast_2d(queries)).numpy(), np.float32)
        k = min(int(k), len(self))
        rows, raw = self.searcher.search_batched(q, final_num_neighbors=k)
        scores = raw if sim.larger_is_closer else -raw
        if sim.name == "L2":
            scores = -np.sqrt(np.maximum(-scores, 0.0))
        return Neighbors(rows.astype(np.int64), scores.astype(np.float32))


def build(embeddings: np.ndarray, similarity: str = "cosine", num_neighbors: int = 10, num_leaves: int = 0,
          num_leaves_to_search: int = 0, reorder: int = 100, dims_per_block: int = 2,
          anisotropic_threshold: float = 0.2):
    """Builds a ScaNN searcher over `embeddings` `[G, D]`.

    Returns:
        `(searcher, params)`: the ScaNN searcher and the parameters actually used.
    """
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"Expected a non-empty [G, D] gallery; got shape {embeddings.shape}.")
    sim = distances.get_distance(similarity)
    db = np.asarray(sim.prepare(embeddings).numpy(), np.float32)
    g = len(db)
    k = min(num_neighbors, g)
    builder = _scann().builder(db, k, sim.scann_measure)
    if g < BRUTE_FORCE_BELOW:
        searcher = builder.score_brute_force().build()
        params = {"mode": "brute_force"}
    else:
        leaves = num_leaves or max(2, int(round(math.sqrt(g))))
        to_search = num_leaves_to_search or max(1, int(math.ceil(leaves / 5)))
        aq = sim.scann_measure == "dot_product"
        builder = builder.tree(num_leaves=leaves, num_leaves_to_search=to_search, training_sample_size=g,
                               spherical=aq and sim.normalize, quantize_centroids=False,
                               )
        if aq:
            builder = builder.score_ah(dims_per_block, anisotropic_quantization_threshold=anisotropic_threshold)
        else:
            builder = builder.score_ah(dims_per_block)
        searcher = builder.reorder(max(reorder, k)).build()
        params = {"mode": "tree_ah", "num_leaves": leaves, "num_leaves_to_search": to_search,
                  "dims_per_block": dims_per_block, "anisotropic_threshold": anisotropic_threshold,
                  "reorder": max(reorder, k)}
    params.update(num_neighbors=k, distance_measure=sim.scann_measure, size=g, dim=int(db.shape[1]))
    log.info("Built ScaNN index over %d items (%s).", g, params["mode"])
    return searcher, params


def _make_relocatable(scann_dir: Path) -> None:
    """Rewrites ScaNN's asset paths to bare file names.

    `searcher.serialize` records absolute paths in `scann_assets.pbtxt`, so an index
    that is moved (the atomic rename, an export copied to a serving host) would no
    longer load. ScaNN resolves relative paths against the folder it loads from.
    """
    pbtxt = scann_dir / "scann_assets.pbtxt"
    text = re.sub(r'asset_path: "[^"]*/([^/"]+)"', r'asset_path: "\1"', pbtxt.read_text())
    pbtxt.write_text(text)


def save(path: os.PathLike, searcher, params: dict, ids: Sequence[str], labels: np.ndarray,
         class_names: Sequence[str], similarity: str, images: Optional[np.ndarray] = None,
         paths: Optional[np.ndarray] = None, atomic: bool = True) -> Path:
    """Writes the index folder at `path` (see module doc); refuses to overwrite.

    With `atomic`, everything is written into a sibling temporary folder renamed at
    the end, so a crash never leaves a half-written index under `path`.
    """
    final = Path(path)
    if final.exists():
        raise UserInputError(f"Index folder {str(final)!r} already exists; choose another path or remove it.")
    work = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}") if atomic else final
    work.mkdir(parents=True)
    try:
        (work / "scann").mkdir()
        searcher.serialize(str(work / "scann"))
        _make_relocatable(work / "scann")
        arrays = {"ids": np.asarray(ids).astype(str), "labels": np.asarray(labels, np.int32)}
        if images is not None:
            arrays["images"] = np.asarray(images, np.uint8)
        if paths is not None:
            arrays["paths"] = np.asarray(paths).astype(str)
        np.savez_compressed(work / "gallery.npz", **arrays)
        meta = {"format": FORMAT, "similarity": similarity, "params": params,
                "class_names": list(class_names), "size": int(len(arrays["ids"]))}
        (work / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
        if atomic:
            os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def load(path: os.PathLike) -> GalleryIndex:
    """Loads an index folder written by `save`.

    Raises:
        UserInputError: `path` is not a tfsim index.
    """
    path = Path(path)
    meta_file = path / "index.json"
    if not meta_file.is_file():
        raise UserInputError(
            f"{str(path)!r} is not a tfsim index: expected a folder with index.json, gallery.npz and "
            "scann/, as written by tfsim.index.save or the train pipeline.")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise UserInputError(f"{str(path)!r} has index format {meta.get('format')!r}; expected {FORMAT!r}.")
    searcher = _scann().load_searcher(str(path / "scann"))
    with np.load(path / "gallery.npz") as npz:
        return GalleryIndex(searcher=searcher, ids=npz["ids"], labels=npz["labels"],
                            class_names=tuple(meta["class_names"]), similarity=meta["similarity"],
                            params=meta["params"], images=npz["images"] if "images" in npz else None,
                            paths=npz["paths"] if "paths" in npz else None)
