"""Retrieval layers: the top-k candidates of each query, inside a Keras model, saved with it.

    Retrieval(k=10, return_scores=True, similarity="cosine")       exact: every candidate scored
      update_candidates(candidate_embeddings, ids)                  (`compute_score`, a matrix
      scores, ids = layer(queries)                                  product) and `tf.math.top_k`
    ScannRetrieval(k=10, ..., target_recall=0.95)                   ScaNN: tfsim's self-tuned index
                                                                    (`tfsim.index.float_search.build`)
                                                                    searched with ScaNN's TF ops

The contract is keras-rs's retrieval layers' (`keras_rs.layers.BruteForceRetrieval`): `k`,
`return_scores`, `update_candidates(candidate_embeddings, candidate_ids)`, an overridable
`compute_score(query_embedding, candidate_embedding)`, and `(top scores, top ids)` out, best
first, so code written for one runs with the other. Two differences: the default score is
tfsim's `similarity` (cosine; `similarity="dot"` is keras-rs's dot product), and the candidates
are part of the model's state, so they are saved with it:

* `.keras` (`model.save`, `keras.models.load_model`, also `save_weights`/`load_weights`):
  `save_own_variables` writes the candidates, the ids (ints as int64; strings as their UTF-8
  bytes and offsets, which every Keras weights store can hold) and, for ScaNN, the serialised
  searcher's files; `load_own_variables` recreates them, whatever their number.
* SavedModel (`keras.Sequential([embedder, layer]).export(path)`, `tf.saved_model.load(path).serve(x)`):
  the candidates and ids are TensorFlow variables the exported function reads, saved with it.
  (Keep the loaded object while calling it, `served = tf.saved_model.load(path)`, then
  `served.serve(x)`: the variables belong to it, and `tf.saved_model.load(path).serve(x)` in one
  expression fails with "referencing variables which have been deleted", for any Keras export.)

Storage: the state lives in `tf.Variable`s of unknown shape, created once and re-assigned by
every `update_candidates`, so the candidates may change in number (and dimension) while a
function traced earlier (a model's `predict`, a SavedModel's `serve`) keeps reading the current
ones. (A `keras.Variable` has a fixed shape.) The ids' kind, integers (or row numbers when no ids
are given) or strings, is fixed by the first `update_candidates`: the output's dtype depends on
it. Ties in score go to the lower candidate row (`tf.math.top_k` is stable).

ScaNN (`ScannRetrieval`): the searcher is built by tfsim's index (`float_search.build`: brute force
under `brute_force_below` candidates, else a k-means tree with anisotropic quantisation whose
leaves searched and re-scoring depth are tuned to `target_recall`), serialised, and held as the
tensors of ScaNN's `tensors_to_scann` op, rebuilt into a searcher inside the graph; the tuned
settings are variables. What round-trips, and its limits:

* `.keras` and `save_weights`: yes (the serialised searcher's files are stored as bytes).
* SavedModel: yes (`model.export`); loading it needs ScaNN's ops registered first (`import scann`
  before `tf.saved_model.load`), and stock TF Serving has no ScaNN ops (use `Retrieval` there).
* ScaNN's op builds its searcher once per resource name and keeps it until the process ends.
  Each `update_candidates` gives it a new name: an eager call searches the new candidates, but a
  function traced before the update (a model's cached `predict` function) would search the old
  ones, so it raises an `InvalidArgumentError` saying so instead; rebuild it
  (`model.make_predict_function(force=True)`, or call the model eagerly). A searcher of earlier
  candidates stays in memory once the layer has searched it.
* `compute_score` is not used: ScaNN scores by the `similarity` (dot product or squared L2).
"""

from __future__ import annotations

import io
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from tfsim import distances
from tfsim.index import float_search
from tfsim.index.api import int64_ids

__all__ = ["Retrieval", "ScannRetrieval"]

# The files of a serialised ScaNN searcher, in the order of `tensors_to_scann`'s inputs after `x`
# (the dataset), with the dtype each array holds: None for the serialised protos (strings).
_SCANN_FILES = (("scann_config.pb", None), ("serialized_partitioner.pb", None), ("datapoint_to_token.npy", np.int32),
                ("ah_codebook.pb", None), ("hashed_dataset.npy", np.uint8), ("int8_dataset.npy", np.int8),
                ("int8_multipliers.npy", np.float32), ("dp_norms.npy", np.float32))


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"Invalid value for `k`: expected an integer >= 1, the number of candidates each query "
                         f"returns. Received: k={k!r}")
    return int(k)


def _encode_strings(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (their UTF-8 bytes concatenated, uint8; offsets [N + 1], int64)."""
    encoded = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.tolist()]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


def _decode_strings(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    raw = np.asarray(data, np.uint8).tobytes()
    offsets = np.asarray(offsets, np.int64)
    return np.array([raw[a:b] for a, b in zip(offsets[:-1], offsets[1:])], dtype=object)


def _as_ids(ids, size: int) -> tuple[np.ndarray, str]:
    """The ids as an int64 or bytes (object) array, and their kind ("int" or "str").

    Raises:
        ValueError: ids that are not one per candidate, integers above int64's largest value, or
            neither integers nor strings.
    """
    if ids is None:
        return np.arange(size, dtype=np.int64), "int"
    if isinstance(ids, tf.Tensor):
        ids = ids.numpy()
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != size:
        raise ValueError(f"Invalid `ids`: expected one id per candidate, a 1-D array of {size}. "
                         f"Received: ids with shape {ids.shape}")
    if ids.dtype.kind in "iu":
        return int64_ids(ids), "int"
    if ids.dtype.kind in "US" or (ids.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in ids.tolist())):
        return np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in ids.tolist()], object), "str"
    raise ValueError(f"Invalid `ids`: expected integers (an int or uint dtype, each at most 2**63 - 1: they come "
                     f"back as int64) or strings (str or UTF-8 bytes), one per candidate. Received: ids of dtype "
                     f"{ids.dtype}, e.g. {ids[:1].tolist()!r}. Convert whole-number floats with "
                     "`ids.astype(np.int64)`.")


@keras.saving.register_keras_serializable(package="tfsim")
class Retrieval(keras.layers.Layer):
    """Exact top-k retrieval over a set of candidates held (and saved) by the layer.

    Coming from keras-rs's `BruteForceRetrieval` (whose contract this follows):

    * **The default score is cosine similarity**; keras-rs's is the dot product.
      `similarity="dot"` gives keras-rs's ranking (and scores).
    * **Integer ids come back as int64** (ids above 2**63 - 1 are refused; give them as
      strings); string ids as UTF-8 bytes.
    * `candidate_embeddings` and `candidate_ids` are read-only properties (NumPy arrays); change
      the candidates with `update_candidates`.
    * Memory: `call` builds the whole `[queries, candidates]` score matrix (float32) before its
      top-k, so it grows with batch size x number of candidates (a batch of 1,024 queries
      against 1,000,000 candidates: 4 GB). Batch the queries for a large gallery
      (`model.predict(x, batch_size=...)`), or use `ScannRetrieval`.

    Args:
        candidate_embeddings: optional float `[G, D]`: the candidates (else give them with
            `update_candidates` before calling the layer).
        candidate_ids: optional `[G]` ids (with `candidate_embeddings`).
        k: the number of candidates each query returns (at most the number of candidates).
        return_scores: True: the layer returns `(scores [N, k] float32, ids [N, k])`; False:
            only the ids.
        similarity: how `compute_score` scores: "cosine" (default), "dot", "L2" or "squared-L2"
            (`tfsim.distances.DISTANCES`); scores are oriented so that larger is closer
            (distances negated).
        **kwargs: Keras layer arguments (`name`, ...).

    Returns (when called on queries `[N, D]`):
        Scores `[N, k]` float32, best first, and ids `[N, k]`: int64 (the given ids, or the
        candidates' rows when none were given) or string (bytes, UTF-8) for string ids.

    Raises:
        ValueError: a bad `k`, `similarity` or candidates (see `update_candidates`).

    Example:
        >>> layer = Retrieval(k=2)
        >>> layer.update_candidates(np.eye(3, dtype="float32"), ids=["a", "b", "c"])
        >>> scores, ids = layer(np.array([[0.0, 1.0, 0.1]], "float32"))
        >>> ids.numpy().tolist()
        [[b'b', b'c']]
    """

    def __init__(self, candidate_embeddings=None, candidate_ids=None, k: int = 10, return_scores: bool = True,
                 similarity: str = "cosine", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = _check_k(k)
        if not isinstance(return_scores, bool):
            raise ValueError(f"Invalid value for `return_scores`: expected True or False. "
                             f"Received: return_scores={return_scores!r}")
        self.return_scores = return_scores
        if similarity not in distances.DISTANCES:
            raise ValueError(f"Invalid value for `similarity`: expected one of {sorted(distances.DISTANCES)}. "
                             f"Received: similarity={similarity!r}")
        self.similarity = similarity
        self._distance = distances.get_distance(similarity)
        self._id_kind: Optional[str] = None  # "int" or "str", fixed by the first candidates
        self._candidates: Optional[tf.Variable] = None
        self._ids: Optional[tf.Variable] = None
        if candidate_embeddings is not None:
            self.update_candidates(candidate_embeddings, candidate_ids)
        elif candidate_ids is not None:
            raise ValueError("Invalid arguments: `candidate_ids` were given without `candidate_embeddings`; give "
                             "both, or call `update_candidates(candidate_embeddings, ids)` later.")

    # -- candidates ------------------------------------------------------------------------------

    @property
    def num_candidates(self) -> int:
        """How many candidates the layer holds (0 before `update_candidates`)."""
        return 0 if self._ids is None else int(tf.size(self._ids))

    @property
    def candidate_embeddings(self) -> Optional[np.ndarray]:
        """The candidates `[G, D]` float32 as given to `update_candidates` (keras-rs's attribute of
        that name), or None before it. Read-only: change them with `update_candidates`."""
        return None if self._candidates is None else self._candidates.numpy()

    @property
    def candidate_ids(self) -> Optional[np.ndarray]:
        """The ids as given (int64, or `str` for string ids), or None before `update_candidates`."""
        if self._ids is None:
            return None
        ids = self._ids.numpy()
        return np.array([v.decode("utf-8") for v in ids.tolist()]) if self._id_kind == "str" else ids

    def update_candidates(self, candidate_embeddings, ids=None, *, candidate_ids=None) -> None:
        """Replaces the candidates (their number may change) and their ids.

        Args:
            candidate_embeddings: float `[G, D]`, G >= k.
            ids: optional `[G]` integers or strings, one per candidate (default: the rows 0..G-1).
                Their kind (integers or strings) must stay that of the first candidates.
            candidate_ids: keras-rs's name for `ids`.

        Raises:
            ValueError: not a non-empty `[G, D]` array of finite numbers, fewer than `k` candidates,
                ids not one per candidate or of another kind than before.
        """
        vectors, ids, kind = self._checked(candidate_embeddings, ids, candidate_ids)
        self._set_candidates(vectors)
        self._set_ids(ids, kind)

    def _checked(self, candidate_embeddings, ids, candidate_ids) -> tuple[np.ndarray, np.ndarray, str]:
        """`update_candidates`' arguments checked: the candidates, the ids and their kind."""
        if candidate_ids is not None:
            if ids is not None:
                raise ValueError("Invalid arguments: give the ids once, as `ids` or as `candidate_ids`.")
            ids = candidate_ids
        vectors = self._check_candidates(candidate_embeddings)
        ids, kind = _as_ids(ids, len(vectors))
        self._check_kind(kind)
        return vectors, ids, kind

    def _check_candidates(self, candidate_embeddings) -> np.ndarray:
        if isinstance(candidate_embeddings, (tf.Tensor, tf.Variable)):
            candidate_embeddings = candidate_embeddings.numpy()
        vectors = np.asarray(candidate_embeddings)
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0 or vectors.dtype.kind not in "fiu":
            raise ValueError(f"Invalid `candidate_embeddings`: expected a non-empty float array [num_candidates, "
                             f"dim]. Received: shape {vectors.shape}, dtype {vectors.dtype}")
        vectors = vectors.astype(np.float32)
        if not np.isfinite(vectors).all():
            raise ValueError("Invalid `candidate_embeddings`: they hold NaN or infinite values; embed the "
                             "candidates again (a diverged model?).")
        if len(vectors) < self.k:
            raise ValueError(f"Invalid `candidate_embeddings`: {len(vectors)} candidates for k={self.k}; expected at "
                             f"least k candidates. Give more candidates or a smaller `k`.")
        return vectors

    def _check_kind(self, kind: str) -> None:
        if self._id_kind is not None and kind != self._id_kind:
            held = {"int": "integers", "str": "strings"}
            raise ValueError(f"Invalid `ids`: this layer's ids are {held[self._id_kind]} (its outputs were typed by "
                             f"its first candidates); received {held[kind]}. Convert them, or use a new layer.")

    def _set_candidates(self, vectors: np.ndarray) -> None:
        self._candidates = self._assign(self._candidates, vectors, "candidates")

    def _set_ids(self, ids: np.ndarray, kind: str) -> None:
        self._ids = self._assign(self._ids, ids, "candidate_ids")
        self._id_kind = kind
        self.built = True

    @staticmethod
    def _assign(variable: Optional[tf.Variable], value: np.ndarray, name: str) -> tf.Variable:
        """Assigns `value` to `variable`, creating it (any shape later) on the first call."""
        if variable is None:
            with tf.init_scope():  # (the layer may first be updated inside a traced function's scope)
                return tf.Variable(value, shape=tf.TensorShape(None), trainable=False, name=name)
        variable.assign(value)
        return variable

    # -- search ---------------------------------------------------------------------------------

    def compute_score(self, query_embedding, candidate_embedding):
        """`[N, G]` scores of queries `[N, D]` against candidates `[G, D]`, larger is closer (the
        `similarity`). Override it for another score, as with keras-rs's layers."""
        return self._distance.score(query_embedding, candidate_embedding)

    def _search(self, queries: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(scores [N, k] float32, candidate rows [N, k] int32), best first."""
        scores = tf.cast(self.compute_score(queries, tf.convert_to_tensor(self._candidates)), tf.float32)
        top = tf.math.top_k(scores, k=self.k)
        return top.values, top.indices

    def call(self, inputs):
        if self._ids is None:
            raise ValueError(f"Layer {self.name!r} has no candidates: call `update_candidates(candidate_embeddings, "
                             "ids)` before retrieving.")
        queries = tf.cast(inputs, tf.float32)
        scores, rows = self._search(queries)
        scores = tf.ensure_shape(scores, [None, self.k])
        ids = tf.ensure_shape(tf.gather(self._ids, rows), [None, self.k])
        return (scores, ids) if self.return_scores else ids

    def compute_output_spec(self, inputs):
        batch = inputs.shape[0]
        ids = keras.KerasTensor((batch, self.k), dtype="string" if self._id_kind == "str" else "int64")
        return (keras.KerasTensor((batch, self.k), dtype="float32"), ids) if self.return_scores else ids

    # -- saving ---------------------------------------------------------------------------------

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(k=self.k, return_scores=self.return_scores, similarity=self.similarity)
        return config

    def _state(self) -> dict:
        """The arrays `save_own_variables` writes (the subclass adds its own)."""
        return {"candidates": self._candidates.numpy()}

    def save_own_variables(self, store) -> None:
        """Writes the candidates and ids into Keras's weights store (nothing before `update_candidates`)."""
        if self._ids is None:
            return
        for key, value in self._state().items():
            store[key] = value
        ids = self._ids.numpy()
        if self._id_kind == "str":
            store["ids_utf8"], store["ids_offsets"] = _encode_strings(ids)
        else:
            store["ids"] = ids

    def load_own_variables(self, store) -> None:
        """Recreates the candidates and ids `save_own_variables` wrote, whatever their number.

        Raises:
            ValueError: the weights were saved by the other kind of retrieval layer (`Retrieval`
                and `ScannRetrieval` hold different state), or they do not fit this layer: fewer
                candidates than its `k`, not one id per candidate, ids of another kind than its
                own, damaged string ids. The layer is left as it was.
        """
        keys = set(store.keys())
        if not keys:
            return
        scann = any(key.startswith("scann") for key in keys)
        if scann != isinstance(self, ScannRetrieval):
            saved, this = ("ScannRetrieval", "Retrieval") if scann else ("Retrieval", "ScannRetrieval")
            raise ValueError(f"Layer {self.name!r} is a {type(self).__name__} ({this}), but the weights it is given "
                             f"were saved by a {saved} layer. Load them into a {saved} layer (same `k` and "
                             "`similarity`), or rebuild the candidates with `update_candidates`.")
        if "ids_utf8" in keys and "ids_offsets" in keys:
            ids, kind = self._loaded_strings(np.asarray(store["ids_utf8"]), np.asarray(store["ids_offsets"])), "str"
        elif "ids" in keys:
            ids, kind = np.asarray(store["ids"]), "int"
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise self._load_error(f"its ids are {ids.dtype} of shape {ids.shape}, not a 1-D integer array")
            ids = int64_ids(ids)
        else:
            raise ValueError(f"Layer {self.name!r}: the weights file holds {sorted(keys)}, not the candidates and ids "
                             "a tfsim retrieval layer saves.")
        self._check_kind(kind)
        count = self._loaded_count(store, keys)
        if count != len(ids):
            raise self._load_error(f"it holds {count} candidates but {len(ids)} ids; expected one id per candidate")
        if count < self.k:
            raise self._load_error(f"it holds {count} candidates, fewer than this layer's k={self.k}; load it into a "
                                   f"layer with k <= {count}")
        self._load_state(store, keys)
        self._set_ids(ids, kind)

    def _load_error(self, problem: str) -> ValueError:
        return ValueError(f"Layer {self.name!r} cannot load these weights: {problem}. (Were they saved by another "
                          "layer, or altered?)")

    def _loaded_strings(self, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """String ids from their stored bytes and offsets, checked: offsets from 0 to the byte
        count, never decreasing."""
        if (data.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1 or offsets.dtype.kind not in "iu"
                or int(offsets[0]) != 0 or int(offsets[-1]) != len(data) or (np.diff(offsets) < 0).any()):
            raise self._load_error(f"its string ids are damaged (offsets {offsets[:4].tolist()}... of "
                                   f"shape {offsets.shape} for {data.size} bytes; expected offsets rising from 0 to "
                                   f"the byte count)")
        return _decode_strings(data, offsets)

    def _loaded_count(self, store, keys: set) -> int:
        """The number of candidates in `store` (checked: `[G, D]` finite numbers)."""
        candidates = np.asarray(store["candidates"]) if "candidates" in keys else np.zeros([0])
        if candidates.ndim != 2 or candidates.shape[1] == 0 or candidates.dtype.kind not in "fiu":
            raise self._load_error(f"its candidates have shape {candidates.shape} and dtype {candidates.dtype}; "
                                   "expected a float array [num_candidates, dim]")
        if not np.isfinite(candidates).all():
            raise self._load_error("its candidates hold NaN or infinite values")
        return len(candidates)

    def _load_state(self, store, keys: set) -> None:
        self._set_candidates(np.asarray(store["candidates"], np.float32))


def _scann_tf_ops():
    """ScaNN's TensorFlow ops (`scann.scann_ops.py.scann_ops`)."""
    # lazy: loads ScaNN's TF op library, needed only by a ScannRetrieval layer
    from scann.scann_ops.py import scann_ops
    return scann_ops


@keras.saving.register_keras_serializable(package="tfsim")
class ScannRetrieval(Retrieval):
    """Approximate top-k retrieval with tfsim's self-tuned ScaNN index (see the module doc for
    what saving keeps).

    Args:
        candidate_embeddings, candidate_ids, k, return_scores, similarity: as `Retrieval`
            (`compute_score` is not used: ScaNN scores by the `similarity`).
        target_recall: the recall@k against exact search the index tunes itself to reach
            (`tfsim.index.float_search.build`).
        brute_force_below: fewer candidates than this are scored exhaustively (exact).
        num_leaves: leaves of the k-means tree (0: about 2 sqrt(G)).
        seed: the seed of the tuning's sample.
        **kwargs: Keras layer arguments.

    Attributes:
        index_params: what the index build chose and measured (mode, leaves searched,
            re-scoring depth, measured recall), or None before `update_candidates`.
    """

    def __init__(self, candidate_embeddings=None, candidate_ids=None, k: int = 10, return_scores: bool = True,
                 similarity: str = "cosine", target_recall: float = 0.95,
                 brute_force_below: int = float_search.BRUTE_FORCE_BELOW, num_leaves: int = 0, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(k=k, return_scores=return_scores, similarity=similarity, **kwargs)
        if isinstance(target_recall, bool) or not isinstance(target_recall, (int, float)) or not 0 < target_recall <= 1:
            raise ValueError(f"Invalid value for `target_recall`: expected a recall in (0, 1], e.g. 0.95. "
                             f"Received: target_recall={target_recall!r}")
        self.target_recall = float(target_recall)
        self.brute_force_below = int(brute_force_below)
        self.num_leaves = int(num_leaves)
        self.seed = int(seed)
        self.index_params: Optional[dict] = None
        self._scann: Optional[list] = None  # the dataset, then `_SCANN_FILES`' tensors (`tensors_to_scann`)
        self._search_settings: Optional[tf.Variable] = None  # int32 [leaves to search, re-scoring depth, all leaves]
        self._resource_name = ""
        self._generation = 0  # updates so far; a traced search checks it against `_generation_variable`
        self._generation_variable: Optional[tf.Variable] = None
        self._files: dict = {}  # the serialised searcher's files (what `save_own_variables` writes)
        if candidate_embeddings is not None:
            self.update_candidates(candidate_embeddings, candidate_ids)
        elif candidate_ids is not None:
            raise ValueError("Invalid arguments: `candidate_ids` were given without `candidate_embeddings`.")

    @property
    def candidate_embeddings(self) -> Optional[np.ndarray]:
        """The candidates `[G, D]` float32 as the ScaNN searcher holds them (L2-normalised for
        "cosine"), or None before `update_candidates`."""
        if self._scann is None:
            return None
        dataset = self._scann[0].numpy()
        return dataset if dataset.ndim == 2 else None

    def update_candidates(self, candidate_embeddings, ids=None, *, candidate_ids=None) -> None:
        """Builds (and tunes) a ScaNN index of the candidates; arguments and errors as
        `Retrieval.update_candidates`."""
        vectors, ids, kind = self._checked(candidate_embeddings, ids, candidate_ids)
        searcher, params = float_search.build(vectors, self.similarity, num_neighbors=self.k,
                                              target_recall=self.target_recall,
                                              brute_force_below=self.brute_force_below, num_leaves=self.num_leaves,
                                              seed=self.seed)
        with tempfile.TemporaryDirectory() as folder:
            searcher.serialize(folder)
            files = {path.name: path.read_bytes() for path in Path(folder).iterdir()
                     if path.name != "scann_assets.pbtxt"}  # (absolute paths to the files themselves)
        self._set_scann(files, params)
        self._set_ids(ids, kind)

    def _set_candidates(self, vectors: np.ndarray) -> None:
        raise NotImplementedError  # (ScaNN holds its own copy of the candidates: `_set_scann`)

    def _set_scann(self, files: dict, params: dict) -> None:
        """Assigns the searcher's serialised files and tuned settings to the layer's variables."""
        def array(name: str, dtype) -> np.ndarray:
            if name not in files:  # (a searcher without this part: brute force, or no re-scoring)
                return np.array(b"", object) if dtype is None else np.zeros([], dtype)
            if dtype is None:
                return np.array([files[name]], object)
            return np.load(io.BytesIO(files[name]), allow_pickle=False).astype(dtype, copy=False)

        tensors = [array("dataset.npy", np.float32)] + [array(name, dtype) for name, dtype in _SCANN_FILES]
        if self._scann is None:
            self._scann = [self._assign(None, t, f"scann_{i}") for i, t in enumerate(tensors)]
        else:
            for variable, t in zip(self._scann, tensors):
                variable.assign(t)
        tree = params.get("mode") == "tree_ah"
        settings = np.array([int(params["num_leaves_to_search"]) if tree else -1,
                             max(int(params["reorder"]), self.k) if tree else -1,
                             int(params["num_leaves"]) if tree else -1], np.int32)
        self._search_settings = self._assign(self._search_settings, settings, "scann_settings")
        self.index_params = dict(params)
        self._files = files
        # ScaNN's op keeps the searcher it built under its resource name: a new name, a new searcher
        self._resource_name = f"tfsim-scann-{uuid.uuid4().hex}"
        self._generation += 1
        self._generation_variable = self._assign(self._generation_variable, np.int64(self._generation),
                                                 "scann_generation")

    def _search(self, queries: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        ops = _scann_tf_ops()
        q = self._distance.prepare(queries)
        n = tf.shape(q)[0]  # ScaNN's op refuses a batch of 0: one unit query more, dropped after
        q = tf.concat([q, tf.fill([1, tf.shape(q)[1]], tf.math.rsqrt(tf.cast(tf.shape(q)[1], q.dtype)))], 0)
        current = tf.debugging.assert_equal(
            self._generation_variable, tf.constant(self._generation, tf.int64),
            message=f"ScannRetrieval layer {self.name!r}: its candidates were updated after this function was traced, "
                    "and ScaNN's op would search the old ones. Rebuild the function (e.g. "
                    "`model.make_predict_function(force=True)`) or call the model eagerly.")
        with tf.control_dependencies([current]):
            handle = ops.tensors_to_scann(*self._scann, shared_name=self._resource_name)

        def search(queries, leaves):
            return ops.scann_search_batched(handle, queries, self.k, self._search_settings[1], leaves, False)

        rows, raw = search(q, self._search_settings[0])
        rows, raw = float_search.tf_complete_short(rows[:n], raw[:n], q[:n], self.k,
                                                   lambda short: search(short, self._search_settings[2]))
        scores = raw if self._distance.larger_is_closer else -raw
        if self._distance.name == "L2":
            scores = -tf.sqrt(tf.maximum(-scores, 0.0))
        return tf.cast(scores, tf.float32), rows

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(target_recall=self.target_recall, brute_force_below=self.brute_force_below,
                      num_leaves=self.num_leaves, seed=self.seed)
        return config

    def _state(self) -> dict:
        state = {f"scann:{name}": np.frombuffer(data, np.uint8).copy() for name, data in sorted(self._files.items())}
        state["scann_params"] = np.frombuffer(json.dumps(self.index_params).encode(), np.uint8).copy()
        return state

    def _loaded_count(self, store, keys: set) -> int:
        """The number of candidates the stored searcher holds (its `params["size"]`)."""
        if "scann_params" not in keys or "scann:scann_config.pb" not in keys:
            raise self._load_error(f"it holds {sorted(keys)}, without a complete ScaNN searcher")
        try:
            params = json.loads(np.asarray(store["scann_params"], np.uint8).tobytes().decode())
            return int(params["size"])
        except (ValueError, KeyError, TypeError) as e:
            raise self._load_error(f"its searcher's settings are unreadable ({e})") from None

    def _load_state(self, store, keys: set) -> None:
        files = {key.split(":", 1)[1]: np.asarray(store[key], np.uint8).tobytes()
                 for key in keys if key.startswith("scann:")}
        self._set_scann(files, json.loads(np.asarray(store["scann_params"], np.uint8).tobytes().decode()))
