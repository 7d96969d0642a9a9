"""`Index`: the pipeline's self-tuned search index for embeddings a user brings.

    index = Index.build(embeddings, ids=ids)        float_search.build: brute force under
                                                    `brute_force_below` items, else a ScaNN tree
                                                    tuned to `target_recall` (autotune.py)
    Index.build(codes, ids=ids, similarity="hamming")   hamming.build_hamming: Hamming search of the
                                                    sign bits of `[G, bits]` codes (faiss: exact,
                                                    or an inverted file above `hamming_exact_below`)
    scores, ids = index.search(queries, k=10)       best first, larger is closer (distances and
                                                    Hamming distances negated)
    index.save(folder); Index.load(folder)          storage.py: written atomically, checked when
                                                    read (checksums, schema), repaired after a crash

`Index.load` also opens the index folders the pipeline writes (`python -m tfsim.pipelines.index`,
a run's export); their ids are the images' paths, and `labels` their class names.

The folder is storage.py's, whose schema was made for catalogues of images: a library index
records what it lacks as such. Its ids are stored as text and come back as they were given
(int64 or str: `params["id_type"]`); it has one class, "unlabelled" (`labels` is None); its
"images" are a 1 x 1 placeholder each; and its model is named by a fingerprint that no export
has ("none: ..."), so the pipeline's commands refuse to search it with an export (the export did
not embed it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tfsim import locks
from tfsim.errors import UserInputError
from tfsim.files import write_json
from tfsim.index import float_search, hamming, storage

# What a library-built index records where the pipeline records the model that embedded the gallery.
NO_MODEL = "none: built from embeddings with tfsim.index.Index"
UNLABELLED = "unlabelled"
SIMILARITIES = ("cosine", "dot", "L2", "squared-L2", "hamming")


INT64_MAX = int(np.iinfo(np.int64).max)


def int64_ids(ids: np.ndarray) -> np.ndarray:
    """Integer ids (any int or uint dtype) as int64, the dtype both the index and the retrieval
    layers (`tfsim.layers`) store and return.

    Raises:
        ValueError: an unsigned id above int64's largest value, which the cast would wrap to a
            negative number (2**63 + 5 -> -9223372036854775803).
    """
    if ids.dtype.kind == "u" and ids.size and int(ids.max()) > INT64_MAX:
        big = ids > INT64_MAX
        raise ValueError(f"Invalid `ids`: integer ids are stored as int64, whose largest value is 2**63 - 1 = "
                         f"{INT64_MAX}. Received: {int(big.sum())} larger ids (dtype {ids.dtype}), e.g. "
                         f"{int(ids[big][0])}. Give them as strings (`ids.astype(str)`) or map them to smaller "
                         "integers.")
    return ids.astype(np.int64)


def _ids(ids, size: int) -> tuple[np.ndarray, str]:
    """The ids as int64 or str, and which ("int" or "str")."""
    if ids is None:
        return np.arange(size, dtype=np.int64), "int"
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != size:
        raise ValueError(f"Invalid `ids`: expected one id per embedding, a 1-D array of {size}. "
                         f"Received: ids with shape {ids.shape}")
    if ids.dtype.kind in "iu":
        return int64_ids(ids), "int"
    if ids.dtype.kind in "US" or (ids.dtype.kind == "O" and all(isinstance(v, str) for v in ids.tolist())):
        ids = ids.astype(str)
        if any(not value for value in ids.tolist()):
            raise ValueError("Invalid `ids`: an empty string; give every item a non-empty id.")
        return ids, "str"
    raise ValueError(f"Invalid `ids`: expected integers (an int or uint dtype, each at most 2**63 - 1: stored as "
                     f"int64) or strings (str), one per embedding. Received: ids of dtype {ids.dtype}, e.g. "
                     f"{ids[:1].tolist()!r}. Convert whole-number floats with `ids.astype(np.int64)`.")


class Index:
    """A search index of embeddings with ids: build, search, save, load.

    Build one with `Index.build` or open a folder with `Index.load` (the constructor is theirs).

    Attributes:
        ids: `[G]` int64 or str, the id of each item, in the order given.
        similarity: "cosine", "dot", "L2", "squared-L2" or "hamming".
        params: what the build chose and measured ("mode": "brute_force", "tree_ah" or "hamming";
            for a tree, the leaves searched, the re-scoring depth and the measured recall).
        labels: `[G]` str class names for an index the pipeline built from labelled images, else None.
    """

    def __init__(self, gallery: float_search.GalleryIndex):
        self._gallery = gallery
        self.params = gallery.params
        kind = self.params.get("id_type", "str")
        self.ids = gallery.ids.astype(np.int64) if kind == "int" else gallery.ids.astype(str)
        self.similarity = "hamming" if self.params.get("mode") == "hamming" else gallery.similarity
        unlabelled = list(gallery.class_names) == [UNLABELLED] and self.params.get("id_type") is not None
        self.labels = None if unlabelled else np.asarray(gallery.class_names)[gallery.labels]

    def __len__(self) -> int:
        return len(self._gallery)

    def __repr__(self) -> str:
        return f"<tfsim.index.Index: {len(self)} items, {self.similarity}, {self.params.get('mode')}>"

    @classmethod
    def build(cls, embeddings, ids=None, similarity: str = "cosine", *, num_neighbors: int = 10,
              target_recall: float = 0.95, brute_force_below: int = float_search.BRUTE_FORCE_BELOW,
              num_leaves: int = 0, hamming_exact_below: int = hamming.HAMMING_EXACT_BELOW,
              seed: int = 0) -> "Index":
        """Builds a self-tuned index of `embeddings`.

        Args:
            embeddings: float `[G, D]` (for "hamming": `[G, bits]` codes, bits a multiple of 8,
                each bit the sign of a code, e.g. a tanh hashing head's output).
            ids: optional `[G]` integers (returned as int64, so at most 2**63 - 1) or non-empty
                strings (default: the rows 0..G-1).
            similarity: "cosine" (default), "dot", "L2", "squared-L2" or "hamming".
            num_neighbors: the k the tuning measures recall at.
            target_recall: the recall@k against exact search a tree tunes itself to reach.
            brute_force_below: fewer items than this are searched exhaustively (exact).
            num_leaves: the tree's leaves (0: about 2 sqrt(G)); non-zero builds a tree at any size.
            hamming_exact_below: "hamming" galleries of fewer codes are searched exactly; larger
                ones get an inverted file (faiss) tuned to `target_recall`.
            seed: the tuning sample's seed.

        Raises:
            ValueError: not a non-empty `[G, D]` array of finite numbers, ids that are not one per
                item (or integers above 2**63 - 1, or neither integers nor strings), an unknown
                similarity or a bad setting.

        Example:
            >>> index = Index.build(np.eye(4, dtype="float32"), ids=["a", "b", "c", "d"])
            >>> scores, ids = index.search(np.array([[0, 1, 0, 0]], "float32"), k=2)
            >>> ids[0, 0]
            'b'
        """
        if similarity not in SIMILARITIES:
            raise ValueError(f"Invalid value for `similarity`: expected one of {list(SIMILARITIES)}. "
                             f"Received: similarity={similarity!r}")
        vectors = np.asarray(embeddings)
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0 or vectors.dtype.kind not in "fiu":
            raise ValueError(f"Invalid `embeddings`: expected a non-empty numeric array [num_items, dim]. "
                             f"Received: shape {vectors.shape}, dtype {vectors.dtype}")
        vectors = vectors.astype(np.float32)
        if not np.isfinite(vectors).all():
            raise ValueError("Invalid `embeddings`: they hold NaN or infinite values; embed the items again.")
        if isinstance(num_neighbors, bool) or not isinstance(num_neighbors, (int, np.integer)) or num_neighbors < 1:
            raise ValueError(f"Invalid value for `num_neighbors`: expected an integer >= 1. "
                             f"Received: num_neighbors={num_neighbors!r}")
        ids, id_type = _ids(ids, len(vectors))
        if isinstance(hamming_exact_below, bool) or not isinstance(hamming_exact_below, (int, np.integer)) \
                or hamming_exact_below < 0:
            raise ValueError("Invalid value for `hamming_exact_below`: expected an integer >= 0 (0 = always an "
                             f"inverted file). Received: hamming_exact_below={hamming_exact_below!r}")
        if similarity == "hamming":
            if vectors.shape[1] % 8:
                raise ValueError(f"Invalid `embeddings` for similarity='hamming': expected codes [num_items, bits] "
                                 f"with bits a multiple of 8. Received: {vectors.shape[1]} bits")
            searcher, params = hamming.build_hamming(vectors, int(num_neighbors), target_recall, hamming_exact_below,
                                                     seed=seed)
            stored_similarity = "cosine"  # (storage's schema names a float similarity; the mode says Hamming)
        else:
            searcher, params = float_search.build(vectors, similarity, num_neighbors=int(num_neighbors),
                                                  target_recall=target_recall, brute_force_below=brute_force_below,
                                                  num_leaves=num_leaves, seed=seed)
            stored_similarity = similarity
        params.update(num_neighbors=min(int(num_neighbors), len(vectors)), id_type=id_type)
        return cls(float_search.GalleryIndex(
            searcher=searcher, ids=ids, labels=np.zeros(len(vectors), np.int32), class_names=(UNLABELLED,),
            similarity=stored_similarity, params=params))

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The `k` nearest items of each query.

        Args:
            queries: float `[Q, D]` (or one query `[D]`), as the embeddings were given.
            k: neighbours per query; at most the index's size are returned.

        Returns:
            `(scores [Q, min(k, G)] float32, ids [Q, min(k, G)])`, best first; larger scores are
            closer (distances negated; minus the Hamming distance for "hamming").

        Raises:
            ValueError: a bad `k`, queries of another dimension than the index's, or NaN or
                infinite values in them.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"Invalid value for `k`: expected an integer >= 1. Received: k={k!r}")
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        dim = self.params.get("dim")
        if queries.ndim != 2 or (dim is not None and queries.shape[1] != dim):
            raise ValueError(f"Invalid `queries`: expected [num_queries, {dim}] like the index's embeddings. "
                             f"Received: shape {queries.shape}")
        if not np.isfinite(queries).all():
            bad = np.flatnonzero(~np.isfinite(queries).all(axis=1))
            raise ValueError(f"Invalid `queries`: {len(bad)} of the {len(queries)} queries hold NaN or infinite "
                             f"values (rows {bad[:5].tolist()}); expected finite numbers. Embed them again "
                             "(a diverged model?).")
        found = self._gallery.search(queries, int(k))
        return found.scores, self.ids[found.indices]

    def save(self, path: os.PathLike, overwrite: bool = False) -> Path:
        """Writes the index folder at `path` atomically (a temporary folder beside it, renamed at
        the end; with `overwrite`, an existing index there is swapped out only once the new one is
        complete), under the folder's lock.

        Raises:
            UserInputError: `path` exists and not `overwrite`, or another process is writing it.
        """
        path = Path(path)
        gallery = self._gallery
        path.parent.mkdir(parents=True, exist_ok=True)
        with locks.sibling_lock(path, "index"):
            storage.recover(path)  # (leftovers of an earlier write that was killed)
            dim = int(self.params.get("dim", 1))
            storage.save(path, gallery.searcher, self.params, gallery.ids.astype(str), gallery.labels,
                         gallery.class_names, gallery.similarity,
                         images=gallery.images if gallery.images is not None or gallery.paths is not None
                         else np.zeros((len(self), 1, 1, 1), np.uint8),
                         paths=gallery.paths, model=gallery.meta["model"] if gallery.meta else
                         {"name": None, "version": None, "path": None, "fingerprint": NO_MODEL,
                          "embedding_dim": dim},
                         replace=overwrite, id_kind=gallery.meta["id_kind"] if gallery.meta else "relative")
        return path

    @classmethod
    def load(cls, path: os.PathLike) -> "Index":
        """Opens an index folder written by `save` (or by the pipeline), checked against its
        checksums and schema.

        Raises:
            UserInputError: not an index folder, or a damaged or altered one.
        """
        return cls(storage.load(path))


PARTS_FILE = "parts.json"
PARTS_FORMAT = "tfsim-sharded-index/1"


class ShardedIndex:
    """An index split into parts, searched by fan-out and merge: for a gallery larger than one
    machine's memory (docs/serving.md says where the split falls).

    A sharded index is a folder of index folders (`part-00000/`, ...: each an ordinary index,
    built, tuned and checked on its own) and `parts.json` (written last, atomically) naming them.
    `search` asks every part for its `k` best and keeps the `k` best of all: each true neighbour
    is among its own part's `k` best, so exact parts give exactly one index's answer (ties in part
    order), and tuned parts keep their own measured recall.

    Example:
        >>> index = ShardedIndex.load("catalogue_index")   # written by the index command's --max-items
        >>> scores, ids = index.search(queries, k=10)
    """

    def __init__(self, parts: list):
        if not parts:
            raise ValueError("A ShardedIndex needs at least one part.")
        self.parts = list(parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __repr__(self) -> str:
        return f"<tfsim.index.ShardedIndex: {len(self)} items in {len(self.parts)} parts>"

    @staticmethod
    def write_parts(folder: os.PathLike, names: list[str]) -> Path:
        """Records the index folders `folder/<name>` (each complete) as the parts of a sharded index."""
        folder = Path(folder)
        sizes = [int(storage.read_meta(folder / n)["size"]) for n in names]
        write_json(folder / PARTS_FILE, {"format": PARTS_FORMAT, "parts": list(names), "sizes": sizes,
                                         "size": sum(sizes)})
        return folder

    @staticmethod
    def is_sharded(folder: os.PathLike) -> bool:
        return (Path(folder) / PARTS_FILE).is_file()

    @classmethod
    def load(cls, folder: os.PathLike) -> "ShardedIndex":
        """Opens every part named by `folder/parts.json`, each checked as `Index.load` checks it.

        Raises:
            UserInputError: no or a damaged parts.json, or a part missing or damaged.
        """
        folder = Path(folder)
        try:
            meta = json.loads((folder / PARTS_FILE).read_text(encoding="utf-8"))
            names = meta["parts"] if meta.get("format") == PARTS_FORMAT else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserInputError(f"{str(folder)!r} is not a sharded index: its {PARTS_FILE} cannot be read "
                                 f"({type(err).__name__}: {err}).") from None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and "/" not in n and n not in
                                                               ("", ".", "..") for n in names):
            raise UserInputError(f"{str(folder / PARTS_FILE)!r} does not name the parts of a tfsim sharded index.")
        parts = [Index.load(folder / n) for n in names]
        if [len(p) for p in parts] != meta.get("sizes"):
            raise UserInputError(f"The parts of {str(folder)!r} do not hold the items {PARTS_FILE} records: a part "
                                 "was replaced; rebuild the sharded index.")
        return cls(parts)

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Every part's `k` best, merged: `(scores [Q, min(k, G)], ids)` best first (as `Index.search`)."""
        found = [p.search(queries, k) for p in self.parts]
        scores = np.concatenate([s for s, _ in found], axis=1)
        ids = np.concatenate([i.astype(object) if i.dtype.kind in "US" else i for _, i in found], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, scores.shape[1])]
        ids = np.take_along_axis(ids, order, axis=1)
        return np.take_along_axis(scores, order, axis=1), ids.astype(str) if ids.dtype == object else ids
