"""A ScaNN index over a gallery of embeddings, with the row -> image id/label mapping.

On disk (a folder, written atomically: built under a temporary name, then renamed):

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
                        hashing model's Hamming index (`build_hamming`) the packed codes
                        (codes.npy, uint8 [G, bits / 8])

Updates (`save(replace=True)`, under the caller's `sibling_lock`) swap folders by two renames; a
crash between them leaves `.old-<name>-*` and `.tmp-<name>-*` beside the path and no index at it.
`recover` (run by `read_meta`, so by every command that opens the index) restores a complete,
verified one to the name and removes the stale ones, and logs what it did.

Search results are oriented so that larger scores are closer, whatever the
similarity (`tfsim.distances.DISTANCES`), and returned as the same `Neighbors` as `evaluation.exact_knn`;
that is what lets tests compare ScaNN to brute force by recall and by scores.

Parameters: galleries under `BRUTE_FORCE_BELOW` items are scored exhaustively; larger ones use
a k-means tree of ~2 sqrt(G) leaves, anisotropic quantisation (2 dims per block, threshold 0.2)
and exact re-scoring, and the index tunes itself (`build` -> `tune_search`): it measures
recall@k against exact search on a sample of gallery vectors and keeps the fastest number of
leaves searched and re-scoring depth that reach `target_recall`; index.json records both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfsim import distances
from tfsim.errors import UserInputError
from tfsim.evaluation.knn import Neighbors

log = logging.getLogger(__name__)
FORMAT = "tfsim.scann_index.v3"  # v3: index.json's own digest and schema, file fingerprints of the model, id kind
READABLE_FORMATS = (FORMAT,)
# Formats this tfsim no longer reads: their index.json was not covered by a checksum (v1 had no
# checksums at all) and their model fingerprint was metadata the model carried about itself.
OLDER_FORMATS = ("tfsim.scann_index.v1", "tfsim.scann_index.v2")
MODES = ("brute_force", "tree_ah", "hamming")
# What a gallery id is: "relative" (the image's path relative to the data root, or "<dataset>:<row>"
# for images that only exist in memory) or "path" (the absolute path, asked for explicitly).
ID_KINDS = ("relative", "path")
# Below this many items the index scores every item (exact, and about as fast at that size).
BRUTE_FORCE_BELOW = 20_000
# The k-means tree is trained on at most this many vectors (ScaNN's own examples use 250k).
TRAINING_SAMPLE = 250_000


def _scann():
    try:
        from scann import scann_ops_pybind
    except ImportError as err:  # pragma: no cover - scann is a hard dependency
        raise ImportError("tfsim's index needs `scann==1.4.2` (pip install scann==1.4.2).") from err
    return scann_ops_pybind


class HammingSearcher:
    """Exact Hamming search over packed binary codes (`tfsim.index.hamming`), with the parts of
    ScaNN's searcher interface the index uses: `search_batched` (relaxed query codes in; rows
    and negated Hamming distances out, nearest first, ties by row), `serialize`, `size`, and
    `searcher.upsert` for additions."""

    def __init__(self, codes: np.ndarray):
        self.codes = np.asarray(codes, np.uint8)
        self.searcher = self  # (`add_to_index` calls `searcher.searcher.upsert`, as for ScaNN)

    def search_batched(self, queries, final_num_neighbors=10, **unused):
        from tfsim.index.hamming import hamming_topk, pack_codes

        rows, dist = hamming_topk(pack_codes(np.asarray(queries)), self.codes, final_num_neighbors)
        return rows, -dist.astype(np.float32)

    def upsert(self, indices, vectors, batch_size=1):
        from tfsim.index.hamming import pack_codes

        self.codes = np.concatenate([self.codes, pack_codes(np.asarray(vectors))])

    def size(self) -> int:
        return int(len(self.codes))

    def serialize(self, directory: str) -> None:
        np.save(Path(directory) / "codes.npy", self.codes)

    @classmethod
    def load(cls, directory: os.PathLike) -> "HammingSearcher":
        return cls(np.load(Path(directory) / "codes.npy"))


def build_hamming(relaxed: np.ndarray) -> tuple[HammingSearcher, dict]:
    """A Hamming index of `[G, bits]` relaxed codes (a `model.head=hash` export's embeddings)."""
    from tfsim.index.hamming import pack_codes

    codes = pack_codes(relaxed)
    return HammingSearcher(codes), {"mode": "hamming", "code_bits": int(codes.shape[1] * 8), "size": len(codes),
                                    "dim": int(np.asarray(relaxed).shape[1]), "num_neighbors": 10,
                                    "bytes_per_item": int(codes.shape[1])}


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
    meta: Optional[dict] = None

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
        k = min(int(k), len(self))
        if self.params.get("mode") == "hamming":  # scores: minus the Hamming distance
            rows, scores = self.searcher.search_batched(np.atleast_2d(queries), final_num_neighbors=k)
            return Neighbors(rows.astype(np.int64), scores.astype(np.float32))
        sim = distances.get_distance(self.similarity)
        q = np.asarray(sim.prepare(np.atleast_2d(queries)).numpy(), np.float32)
        if self.params.get("mode") == "tree_ah":  # the tuned settings (see `build`)
            rows, raw = self.searcher.search_batched(
                q, final_num_neighbors=k, leaves_to_search=int(self.params["num_leaves_to_search"]),
                pre_reorder_num_neighbors=max(int(self.params["reorder"]), k))
        else:
            rows, raw = self.searcher.search_batched(q, final_num_neighbors=k)
        scores = raw if sim.larger_is_closer else -raw
        if sim.name == "L2":
            scores = -np.sqrt(np.maximum(-scores, 0.0))
        return Neighbors(rows.astype(np.int64), scores.astype(np.float32))


def _exact_neighbours(db: np.ndarray, rows: np.ndarray, k: int, measure: str) -> np.ndarray:
    """`[S, k]` exact nearest gallery rows of the gallery rows `rows`, each row itself excluded."""
    from tfsim.evaluation.knn import exact_knn

    similarity = "dot" if measure == "dot_product" else "squared-L2"  # db is already prepared
    block = max(1, (1 << 26) // len(db))  # ~256 MB of scores at a time
    found = exact_knn(db[rows], db, k + 1, similarity, block_size=block).indices
    return _drop_self(found, rows, k)


def _drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first k of each row of `found` other than the query's own row, -1 where a row has fewer
    (ScaNN pads a search that found fewer than asked with repeats of row 0)."""
    out = np.full((len(rows), k), -1, np.int64)
    for i, (row, own) in enumerate(zip(found, rows)):
        kept = [r for r in dict.fromkeys(row.tolist()) if r != own][:k]
        out[i, :len(kept)] = kept
    return out


MAX_REORDER_FACTOR = 1024  # the deepest re-scoring the tuner tries: k x this


def _timed_search(searcher, queries: np.ndarray, k: int, leaves: int, reorder: int) -> tuple[np.ndarray, float]:
    """Neighbour rows and the best-of-2 wall time of one batched search."""
    best, rows = float("inf"), None
    for _ in range(2):
        start = time.perf_counter()
        rows, _ = searcher.search_batched(queries, final_num_neighbors=k, leaves_to_search=leaves,
                                          pre_reorder_num_neighbors=reorder)
        best = min(best, time.perf_counter() - start)
    return rows, best


def tune_search(searcher, db: np.ndarray, k: int, num_leaves: int, target_recall: float,
                measure: str, sample: int = 1000, seed: int = 0, leaves_to_search: int = 0,
                reorder: int = 0) -> dict:
    """The fastest search settings of a tree searcher that reach `target_recall` at k.

    Recall@k is measured against exact search on a seeded sample of gallery vectors used as
    queries, each with itself excluded (queries from the gallery's own distribution), and each
    setting tried is timed on that sample. Re-scoring depths (`reorder` if given, else
    k x {16, 8, 4, 2, 1}, then, if none reaches the target, k x {32, 64, ..., 1024} up to the
    gallery's size until one does) are tried deepest first; for each, the fewest leaves to search that reach
    the target (`leaves_to_search` if given) are found by doubling from the previous depth's
    answer (a shallower re-scoring never needs fewer leaves), then bisecting. A depth is given up
    when its settings get slower than the best one found, or its recall stops growing. The
    fastest setting that reaches the target wins; if none does, the one with the highest recall
    is kept and the result says so.

    Returns:
        {"num_leaves_to_search", "reorder", "measured_recall", "queries_per_second" (on the
        sample, one thread), "target_recall", "target_met", "sample", "tried": [...]}.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(db), min(sample, len(db)), replace=False))
    queries = db[rows]
    truth = _exact_neighbours(db, rows, k, measure)
    k_search = min(k + 1, len(db))
    tried: dict = {}

    def probe(leaves: int, depth: int) -> tuple[float, float]:
        """(recall, seconds) of one setting on the sample."""
        if (leaves, depth) not in tried:
            found, seconds = _timed_search(searcher, queries, k_search, leaves, max(depth, k_search))
            found = _drop_self(found.astype(np.int64), rows, k)
            hits = sum(len(set(a) & set(b)) for a, b in zip(found, truth))
            tried[leaves, depth] = (hits / truth.size, seconds)
        return tried[leaves, depth]

    best: Optional[tuple[int, int]] = None  # the fastest setting reaching the target so far

    def slower_than_best(setting: tuple[int, int]) -> bool:
        return best is not None and tried[setting][1] > tried[best][1]

    def fewest_leaves(depth: int, lower: int) -> Optional[int]:
        """The fewest leaves (from `lower`) reaching the target at `depth`, or None."""
        leaves, previous = lower, -1.0
        while True:
            got, _ = probe(leaves, depth)
            if got >= target_recall or leaves_to_search or slower_than_best((leaves, depth)):
                break
            if leaves >= num_leaves or got - previous < 0.001:  # this depth's recall has stopped growing
                break
            previous, leaves = got, min(2 * leaves, num_leaves)
        if probe(leaves, depth)[0] < target_recall:
            return None
        lo, hi = max(lower, leaves // 2), leaves  # bisect: fewest leaves in (lo, hi] reaching the target
        if probe(lo, depth)[0] >= target_recall:
            hi = lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if probe(mid, depth)[0] >= target_recall:
                hi = mid
            else:
                lo = mid
        return hi

    depths = [reorder] if reorder else sorted({max(k, k * m) for m in (1, 2, 4, 8, 16)}, reverse=True)
    lower = leaves_to_search or 1
    for depth in depths:
        leaves = fewest_leaves(depth, lower)
        if leaves is None:
            continue
        if best is None or tried[leaves, depth][1] < tried[best][1]:
            best = (leaves, depth)
        lower = leaves
    # Nothing reached the target: re-score deeper (near-duplicate clusters need the whole
    # cluster re-scored), doubling up to k x 1024 or the gallery, until a depth does.
    cap = min(len(db), k * MAX_REORDER_FACTOR)
    deeper = [d for d in (k * 2 ** e for e in range(5, 11)) if d < cap] + [cap]
    for depth in deeper if best is None and not reorder and cap > max(depths) else []:
        leaves = fewest_leaves(depth, leaves_to_search or 1)
        if leaves is not None:
            best = (leaves, depth)
            break
    choice = best or max(tried, key=lambda c: (tried[c][0], -tried[c][1]))
    measured, seconds = tried[choice]
    return {"num_leaves_to_search": int(choice[0]), "reorder": int(max(choice[1], k_search)),
            "measured_recall": float(measured), "queries_per_second": float(len(rows) / max(seconds, 1e-9)),
            "target_recall": float(target_recall), "target_met": best is not None,
            "sample": int(len(rows)),
            "tried": [{"num_leaves_to_search": a, "reorder": b, "recall": r, "seconds": t}
                      for (a, b), (r, t) in sorted(tried.items())]}


def options(index_config) -> dict:
    """`build`'s keyword arguments from an `IndexConfig`."""
    keys = ("num_neighbors", "num_leaves", "num_leaves_to_search", "reorder", "dims_per_block",
            "anisotropic_threshold", "target_recall", "brute_force_below")
    return {key: getattr(index_config, key) for key in keys}


def build(embeddings: np.ndarray, similarity: str = "cosine", num_neighbors: int = 10, num_leaves: int = 0,
          num_leaves_to_search: int = 0, reorder: int = 0, dims_per_block: int = 2,
          anisotropic_threshold: float = 0.2, target_recall: float = 0.95,
          brute_force_below: int = BRUTE_FORCE_BELOW, tuning_sample: int = 1000, seed: int = 0):
    """Builds a ScaNN searcher over `embeddings` `[G, D]` that tunes its own search settings.

    Galleries under `brute_force_below` items (and no `num_leaves` asked for) are scored
    exhaustively: exact, and fast enough at that size. Larger ones get a k-means tree of
    `num_leaves` (0: 2 sqrt(G)) leaves trained on at most `TRAINING_SAMPLE` vectors,
    anisotropic quantisation (`dims_per_block` dims per block) and exact re-scoring; the leaves
    searched and the re-scoring depth are then chosen by `tune_search` to reach `target_recall`
    at `num_neighbors` as fast as possible (or taken as given when non-zero; recall is measured
    either way). `GalleryIndex.search` applies them.

    Returns:
        `(searcher, params)`: the ScaNN searcher and the parameters used, with what the tuning
        measured ("measured_recall", "queries_per_second", "tuning").
    """
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"Expected a non-empty [G, D] gallery; got shape {embeddings.shape}.")
    if not 0 < target_recall <= 1:
        raise ValueError(f"Invalid target_recall {target_recall}: expected a recall in (0, 1], e.g. 0.95.")
    sim = distances.get_distance(similarity)
    db = np.asarray(sim.prepare(embeddings).numpy(), np.float32)
    g = len(db)
    k = min(num_neighbors, g)
    start = time.perf_counter()
    builder = _scann().builder(db, k, sim.scann_measure)
    if g < brute_force_below and not num_leaves:
        searcher = builder.score_brute_force().build()
        params = {"mode": "brute_force"}
    else:
        leaves = min(num_leaves or max(2, int(round(2 * math.sqrt(g)))), g)
        aq = sim.scann_measure == "dot_product"
        builder = builder.tree(num_leaves=leaves, num_leaves_to_search=num_leaves_to_search or max(1, leaves // 10),
                               training_sample_size=min(g, TRAINING_SAMPLE), spherical=aq and sim.normalize,
                               quantize_centroids=False)
        if aq:
            builder = builder.score_ah(dims_per_block, anisotropic_quantization_threshold=anisotropic_threshold)
        else:
            builder = builder.score_ah(dims_per_block)
        searcher = builder.reorder(max(reorder, k)).build()  # (search passes the tuned depth)
        build_seconds = time.perf_counter() - start
        tuned = tune_search(searcher, db, k, leaves, target_recall, sim.scann_measure, tuning_sample, seed,
                            num_leaves_to_search, reorder)
        params = {"mode": "tree_ah", "num_leaves": leaves, "num_leaves_to_search": tuned["num_leaves_to_search"],
                  "dims_per_block": dims_per_block, "anisotropic_threshold": anisotropic_threshold,
                  "reorder": tuned["reorder"], "training_sample_size": min(g, TRAINING_SAMPLE),
                  "target_recall": target_recall, "measured_recall": tuned["measured_recall"],
                  "queries_per_second": tuned["queries_per_second"], "build_seconds": build_seconds,
                  "tuning_seconds": time.perf_counter() - start - build_seconds,
                  "tuning": {key: tuned[key] for key in ("sample", "target_met", "tried")}}
        if not tuned["target_met"]:
            log.warning("The index reaches recall@%d %.3f at best, below index.target_recall %.3f: raise "
                        "index.num_leaves or index.dims_per_block.", k, tuned["measured_recall"], target_recall)
        log.info("ScaNN index over %d items: %d leaves, %d searched, reorder %d: recall@%d %.3f (target %.3f) on "
                 "%d gallery queries, %.0f queries/s.", g, leaves, params["num_leaves_to_search"], params["reorder"],
                 k, tuned["measured_recall"], target_recall, tuned["sample"], tuned["queries_per_second"])
    params.update(num_neighbors=k, distance_measure=sim.scann_measure, size=g, dim=int(db.shape[1]))
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
    embedding_dim, fingerprint of its files; see `tfsim.index.catalogue.model_info`).
    """
    final = Path(path)
    if final.exists() and not replace:
        raise UserInputError(f"Index folder {str(final)!r} already exists; choose another path or remove it.")
    work = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}") if atomic else final
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
        if atomic and replace and final.exists():
            old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(work, final)
            shutil.rmtree(old, ignore_errors=True)
        elif atomic:
            os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


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
    from tfsim import locks

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
    needed = ("scann/codes.npy",) if meta["params"]["mode"] == "hamming" else ("scann/scann_assets.pbtxt",)
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
        searcher = (HammingSearcher.load(path / "scann") if meta["params"]["mode"] == "hamming"
                    else _scann().load_searcher(str(path / "scann")))
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
