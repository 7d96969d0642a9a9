"""Retrieval SavedModels: image bytes in, the k nearest gallery items out, for TF Serving.

    export_retrieval(model, index, root)
      the embedding export (its `serving_default`: decoding, resizing, crop, the network)
      + an index folder (`tfsim.index`: the gallery vectors, ids, labels, tuned ScaNN settings)
      -> <root>/<name>_exact/<version>/   exact top-k of plain TF ops (a matrix product and
                                          `tf.math.top_k`): stock TF Serving serves it
      -> <root>/<name>_scann/<version>/   the index's own ScaNN searcher inside the graph
                                          (`scann_ops.ScannState` rebuilt from the index files,
                                          saved with `namespace_whitelist=["Scann"]`): needs a
                                          TF Serving built with ScaNN's ops, or `import scann`
                                          before `tf.saved_model.load` in Python
      -> <root>/<name>_hamming/<version>/ for a hashing export's index (`model.head=hash`): the
                                          packed codes as int64 words, exact Hamming top-k of
                                          plain TF ops (XOR, PopulationCount, `tf.math.top_k`,
                                          one query at a time), ties by the lower row as the
                                          index's own search: stock TF Serving serves it

Each has one signature, `serving_default`: `image_bytes` string `[N]` -> `ids` string `[N, k]`
(the ids the catalogue was indexed with: paths relative to its data root unless it was built
with `--ids path`; never the file layout of the machine that built it otherwise),
`labels` string `[N, k]` (class names), `scores` float32 `[N, k]` (larger is closer, as
`GalleryIndex.search`; minus the Hamming distance for codes), `rows` int64 `[N, k]` (gallery
rows), and, when the embedding export is calibrated (its export.json's "calibration", written by
the training pipeline's `export.calibration`, `tfsim.calibration`) or a `match_threshold` is
given, `match` bool `[N, k]`: `scores >= threshold`, the "same class?" decision for each
neighbour (the threshold and its validation precision and recall are in the retrieval model's
export.json). Each version folder also holds
`assets.extra/tf_serving_warmup_requests` (a gallery image, alone and as a batch) and
`assets.extra/tfsim/export.json`.

Each publish rewrites the export root's TF Serving model configs (`saved_model.write_serving_configs`):
`models.config` lists what stock TF Serving loads (embedders, exact, Hamming) and
`models_scann.config` those plus the ScaNN models, for a TF Serving built with ScaNN's ops.

The exact export holds the gallery as one `[G, D]` float32 variable: G x D x 4 bytes (1M x 128
is 512 MB), and each query costs G x D multiply-adds; past about a million vectors use ScaNN.
The Hamming export holds bits / 8 bytes per item (1M x 64-bit codes are 8 MB).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from absl import logging as absl_logging

from tfsim import distances
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.preprocess import decode, preprocess, to_uint8
from tfsim.errors import UserInputError
from tfsim.export.identity import index_model
from tfsim.export.saved_model import publish, read_export, warmup_image, write_warmup
from tfsim.index import float_search, storage
from tfsim.index.hamming import code_words, tf_code_words, tf_hamming_topk

log = logging.getLogger(__name__)
RETRIEVAL_FORMAT = "tfsim.retrieval.v1"
# TF Serving model configs of an export root: for stock TF Serving, and for one with ScaNN's ops.
KINDS = ("exact", "scann", "hamming")
EMBEDDING_KINDS, CODE_KINDS = ("exact", "scann"), ("hamming",)


def _scann_state(scann_dir: Path):
    """The TF-op ScaNN searcher state (`scann_ops.ScannState`) of a serialised pybind searcher."""
    from scann.scann_ops.py import scann_ops  # lazy: ScaNN's TF ops, loaded only for a ScaNN retrieval model

    def raw(name: str):
        path = scann_dir / name
        return tf.constant([path.read_bytes()]) if path.is_file() else tf.constant("")

    def array(name: str, dtype):
        path = scann_dir / name
        return tf.constant(np.load(path) if path.is_file() else np.zeros([], dtype))

    return scann_ops.ScannState([
        raw("scann_config.pb"), raw("serialized_partitioner.pb"), array("datapoint_to_token.npy", np.int32),
        raw("ah_codebook.pb"), array("hashed_dataset.npy", np.uint8), array("int8_dataset.npy", np.int8),
        array("int8_multipliers.npy", np.float32), array("dp_norms.npy", np.float32),
        array("dataset.npy", np.float32)])


class RetrievalModule(tf.Module):
    """The embedder and the gallery in one servable graph (see module doc)."""

    def __init__(self, embedder, vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray, similarity: str,
                 k: int, kind: str, scann_dir: Optional[Path] = None, params: Optional[dict] = None,
                 threshold: Optional[float] = None):
        super().__init__()
        self.embedder = embedder
        # The calibrated "same class?" threshold (score >= it), or None: no `match` output.
        self.threshold = None if threshold is None else tf.Variable(np.float32(threshold), trainable=False,
                                                                     name="match_threshold")
        self.ids = tf.Variable(np.asarray(ids).astype(str).astype(object), trainable=False, name="ids")
        self.labels = tf.Variable(np.asarray(labels).astype(str).astype(object), trainable=False, name="labels")
        self.k, self.kind, self.similarity = int(min(k, len(ids))), kind, similarity
        params = params or {}
        self.tree = params.get("mode") == "tree_ah"
        self.leaves = int(params.get("num_leaves_to_search", 0))
        self.all_leaves = int(params.get("num_leaves", 0))
        self.reorder = int(max(params.get("reorder", 0), self.k))
        if kind == "hamming":  # `vectors`: the packed codes [G, bits / 8]
            self.code_bytes = int(vectors.shape[1])
            self.code_words = tf.Variable(code_words(vectors), trainable=False, name="code_words")
        elif kind == "exact":
            self.gallery = tf.Variable(vectors, trainable=False, name="gallery")
            self.gallery_norms = tf.Variable(np.sum(vectors.astype(np.float64) ** 2, axis=1).astype(np.float32),
                                             trainable=False, name="gallery_norms")
        else:
            self.scann = _scann_state(scann_dir)

    def _search(self, q: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        sim = distances.get_distance(self.similarity)
        if self.kind == "exact":
            dots = tf.matmul(q, self.gallery, transpose_b=True)
            if sim.scann_measure == "dot_product":
                scores = dots
            else:  # squared L2, negated so that larger is closer
                scores = -(tf.reduce_sum(q * q, axis=1, keepdims=True) - 2 * dots + self.gallery_norms[None, :])
            top = tf.math.top_k(scores, k=self.k)
            rows, scores = top.indices, top.values
        else:
            from scann.scann_ops.py import scann_ops  # lazy: ScaNN's TF ops, loaded only for a ScaNN retrieval model

            searcher = scann_ops.searcher_from_module(self.scann)
            n = tf.shape(q)[0]  # ScaNN's op refuses a batch of 0: one unit query more, dropped after
            q = tf.concat([q, tf.fill([1, tf.shape(q)[1]], tf.math.rsqrt(tf.cast(tf.shape(q)[1], q.dtype)))], 0)
            if self.tree:
                def tree_search(queries, leaves):
                    return searcher.search_batched(queries, final_num_neighbors=self.k, leaves_to_search=leaves,
                                                   pre_reorder_num_neighbors=self.reorder)

                rows, raw = tree_search(q, self.leaves)
                rows, raw = float_search.tf_complete_short(rows[:n], raw[:n], q[:n], self.k,
                                                           lambda short: tree_search(short, self.all_leaves))
            else:
                rows, raw = searcher.search_batched(q, final_num_neighbors=self.k)
            rows, raw = rows[:n], raw[:n]
            scores = raw if sim.larger_is_closer else -raw
        if sim.name == "L2":
            scores = -tf.sqrt(tf.maximum(-scores, 0.0))
        return tf.cast(rows, tf.int64), tf.cast(scores, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        out = self.embedder.signatures["serving_default"](image_bytes=image_bytes)
        if self.kind == "hamming":
            rows, dist = tf_hamming_topk(tf_code_words(out["codes"], self.code_bytes), self.code_words, self.k)
            rows, scores = tf.cast(rows, tf.int64), -tf.cast(dist, tf.float32)
        else:
            rows, scores = self._search(distances.get_distance(self.similarity).prepare(out["embeddings"]))
        rows, scores = tf.ensure_shape(rows, [None, self.k]), tf.ensure_shape(scores, [None, self.k])
        out = {"ids": tf.gather(self.ids, rows), "labels": tf.gather(self.labels, rows), "scores": scores,
               "rows": rows}
        if self.threshold is not None:
            out["match"] = scores >= self.threshold
        return out


def _warmup_images(index, image_size: int, max_pixels: int, count: int = 2) -> list[bytes]:
    """Gallery images for the warm-up records, at the model's input size (a grey picture if none
    can be read). A path is data written in the index: the file is decoded (within the export's
    pixel limit) and re-encoded at `image_size`, so no file's bytes are copied into the export."""
    out = []
    for row in range(min(count, len(index))):
        path = None if index.paths is None else Path(index.paths[row])
        if path is not None and path.is_file():
            try:
                pixels = decode(tf.constant(path.read_bytes()), max_pixels)
            except (OSError, tf.errors.InvalidArgumentError, tf.errors.UnknownError):
                continue
        elif index.images is not None:
            pixels = tf.constant(np.asarray(index.images[row], np.uint8))
        else:
            continue
        out.append(tf.io.encode_png(to_uint8(preprocess(pixels, image_size))).numpy())
    return out or [warmup_image(image_size)]


def _match_calibration(meta: dict, index, match_threshold: Optional[float], codes: bool) -> Optional[dict]:
    """The calibration the `match` output applies: `match_threshold` if given, else the export's
    calibrated one when its score is the index's (never for `codes`, searched by Hamming
    distance); None (no `match`) otherwise."""
    if match_threshold is not None:
        try:
            finite = not isinstance(match_threshold, bool) and bool(np.isfinite(float(match_threshold)))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise UserInputError(f"Invalid match_threshold {match_threshold!r}: expected a finite score (larger is "
                                 "closer), e.g. a `tfsim.calibration.calibrate(...).threshold`.")
        return {"threshold": float(np.float32(match_threshold)),
                "similarity": "hamming" if codes else index.similarity, "source": "match_threshold"}
    calibration = meta.get("calibration") or {}
    if calibration.get("threshold") is None or codes:
        return None
    if calibration.get("similarity") != index.similarity:
        log.warning("No match flag: the export's threshold was calibrated for %r scores, and the index searches by "
                    "%r.", calibration.get("similarity"), index.similarity)
        return None
    return calibration


def export_retrieval(model_dir: os.PathLike, index_dir: os.PathLike, root: os.PathLike, k: int = 10,
                     kinds: Optional[Sequence[str]] = None, name: Optional[str] = None,
                     match_threshold: Optional[float] = None) -> dict[str, Path]:
    """Writes the retrieval SavedModels of an export and an index it built (see module doc).

    Args:
        model_dir: the embedding export.
        index_dir: an index built by that export (`python -m tfsim.pipelines.index`, or the one
            inside the export).
        root: the export root; versions go to `<root>/<name>_<kind>/<version>/`.
        k: neighbours returned per image.
        kinds: "exact" and/or "scann" for an embedding index, "hamming" for a Hamming index
            of binary codes; None: all that fit the index.
        name: the model name prefix (default: the export's name).
        match_threshold: a score threshold for the `match` output (any kind; minus a Hamming
            distance for codes), e.g. one you calibrated with `tfsim.calibration.calibrate` on
            the index's score; None: the export's calibrated threshold, if it has one and its
            score is the index's (else no `match`).

    Returns:
        {kind: version folder}.

    Raises:
        UserInputError: not an export or index, an index of another model, an unknown kind.
    """
    if kinds is not None and (not kinds or set(kinds) - set(KINDS)):
        raise UserInputError(f"Invalid retrieval kinds {list(kinds)}: expected some of {list(KINDS)}.")
    if k < 1:
        raise UserInputError(f"Invalid k {k}: expected an integer >= 1.")
    model_dir, index_dir = Path(model_dir), Path(index_dir)
    meta = read_export(model_dir)
    index = storage.load(index_dir)
    index_model(index_dir, model_dir, index.meta)  # the model that built it (its files' fingerprint), always
    codes = index.params.get("mode") == "hamming"
    fits = CODE_KINDS if codes else EMBEDDING_KINDS
    kinds = fits if kinds is None else tuple(kinds)
    if set(kinds) - set(fits):
        raise UserInputError(
            f"Invalid retrieval kinds {list(kinds)} for index {str(index_dir)!r}: "
            + ("it is a Hamming index of binary codes, served by the 'hamming' kind." if codes else
               "it is an index of embeddings, served by the 'exact' and 'scann' kinds ('hamming' serves "
               "the binary codes of a model.head=hash export).") + f" Use --kinds {','.join(fits)}.")
    # as searched: the packed codes, or the vectors (normalised for cosine)
    vectors = index.searcher.codes if codes else np.load(index_dir / "scann" / "dataset.npy")
    labels = np.asarray(index.class_names)[index.labels]
    calibration = _match_calibration(meta, index, match_threshold, codes)
    embedder = tf.saved_model.load(str(model_dir))
    name = name or meta["name"]
    out = {}
    for kind in kinds:
        threshold = None if calibration is None else calibration["threshold"]
        module = RetrievalModule(embedder, vectors, index.ids, labels, index.similarity, k, kind,
                                 index_dir / "scann", index.params, threshold)
        model_name = f"{name}_{kind}"

        def write(work: Path, version: int, module=module, kind=kind, model_name=model_name) -> dict:
            options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]) if kind == "scann" else None
            level = absl_logging.get_verbosity()
            absl_logging.set_verbosity(absl_logging.ERROR)  # (a warning about the embedder's captured names)
            try:
                tf.saved_model.save(module, str(work), signatures={"serving_default": module.serve}, options=options)
            finally:
                absl_logging.set_verbosity(level)
            limit = meta.get("max_pixels") or DEFAULT_MAX_PIXELS
            write_warmup(work, model_name, _warmup_images(index, meta["image_size"], limit))
            return {"format": RETRIEVAL_FORMAT, "kind": kind, "name": model_name, "version": version, "k": module.k,
                    "gallery_size": len(index), "similarity": index.similarity, "image_size": meta["image_size"],
                    "max_pixels": meta.get("max_pixels"),  # (the embedder's decoding limit, in its graph)
                    "embedder": {"path": str(model_dir.resolve()), "name": meta["name"],
                                 "version": meta.get("version")},
                    "index": {"path": str(index_dir.resolve()), "params": index.params},
                    "needs": "TF Serving with ScaNN's ops, or `import scann` before loading" if kind == "scann"
                    else "stock TF Serving",
                    "calibration": calibration,  # `match` = scores >= its threshold (None: no `match`)
                    "signatures": {"serving_default": "image_bytes -> ids, labels, scores, rows"
                                   + (", match" if calibration is not None else "")}}

        out[kind] = publish(Path(root) / model_name, write)
    return out
