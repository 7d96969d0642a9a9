"""Versioned SavedModels for TF Serving: `<root>/<name>/<version>/`.

Layout of one export (TF Serving loads the SavedModel and ignores `assets.extra/`):

    saved_models/<name>/<version>/
      saved_model.pb, variables/          the embedder, plain TF ops (stock TF Serving)
      assets.extra/tfsim/export.json       tfsim metadata: image size, embedding dim, config
      assets.extra/tfsim/index/            ScaNN index of the evaluation gallery (optional)

Signatures:
  * ``serving_default``: `image_bytes` string `[N]` (encoded JPEG/PNG/BMP/GIF/WebP) ->
    `embeddings` float32 `[N, D]`, L2-normalised. Decoding and resizing to the model's
    input size happen inside the graph, with `tfsim.data.preprocess` (the training pipeline's),
    one image at a time, each refused before decoding when its header declares more than the
    export's `max_pixels` (InvalidArgumentError naming its size and the limit).
  * ``serve_images``: `images` float32 `[N, S, S, 3]`, pixels in [0, 255] -> `embeddings`.

Atomicity: the export is written under `<root>/<name>/.tmp-<version>-<random>/`
(a name TF Serving ignores) and renamed to `<version>` once complete, so a
half-written export is never visible under its final name. Versions are integers,
one more than the largest existing one. While a version is published the name is locked
(`<root>/<name>/.lock`, see `tfsim.locks`), and the next export under the name removes the
`.tmp-*` folders a killed one left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Optional

import keras
import tensorflow as tf

from tfsim import locks
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.preprocess import decode, preprocess
from tfsim.errors import UserInputError, size_text, writing
from tfsim.files import latest_version, version_folders, write_json, write_atomic

log = logging.getLogger(__name__)
EXPORT_FORMAT = "tfsim.export.v1"
META_DIR = Path("assets.extra") / "tfsim"


class _DropSaveChatter(logging.Filter):
    """Drops two INFO lines TensorFlow logs as it writes: absl's "Sharding callback duration: N
    microseconds" (a timing from its checkpoint writer, at every `tf.train.Checkpoint` save) and
    "Assets written to: <folder>" (at every SavedModel: here an export's temporary folder, while
    `export_embedder` logs the final one). Matched by their exact format strings and INFO level,
    so any other record of those loggers, warnings included, passes."""

    MESSAGES = ("Sharding callback duration: %s microseconds", "Assets written to: %s")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg in self.MESSAGES)


def _quiet_save_chatter() -> None:
    for name in ("absl", "tensorflow"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropSaveChatter) for f in logger.filters):
            logger.addFilter(_DropSaveChatter())


_quiet_save_chatter()  # process-wide: whatever writes a checkpoint or SavedModel once tfsim is training


def next_version(base: Path) -> int:
    """One more than the largest integer-named sub-folder of `base` (1 if none)."""
    versions = version_folders(base)
    return versions[-1][0] + 1 if versions else 1


def publish(base: Path, write: Callable[[Path, int], dict],
            write_extras: Optional[Callable[[Path], None]] = None) -> Path:
    """Writes a new version folder under `base` atomically and returns it.

    `write(work, version)` fills the temporary folder `work` and returns the metadata stored as
    `assets.extra/tfsim/export.json`; `write_extras(work)` may add files after it. The folder is
    renamed to the next free integer version at the end (a name TF Serving ignores until then);
    the export root's `models.config` is refreshed.

    The name is locked meanwhile (`<base>/.lock`, `tfsim.locks`): another process publishing under
    it is refused with the holder's pid. Holding the lock, the `.tmp-*` folders under `base` are
    what killed exports left, and are removed (logged). A full disk raises one `DiskFull` line
    naming the folder and about how much the export needed; earlier versions are untouched and
    the temporary folder is removed.

    Raises:
        tfsim.locks.LockHeld: another live process is publishing under this name.
        tfsim.errors.DiskFull: no space left (or the file-size limit reached).
    """
    created = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    try:
        with locks.folder_lock(base, "export name"):
            remove_leftovers(base)
            previous, written = _latest_size(base), [0]

            def needs():  # about the previous version's size, else more than was written when it failed
                return previous or (f"more than {size_text(written[0])}" if written[0] else None)

            with writing(base, f"a new version of {base.name!r}", needs,
                         " (the earlier versions are untouched) and run the same command again."):
                version_dir = _publish_locked(base, write, write_extras, written)
                write_serving_configs(base.parent)
        return version_dir
    finally:
        if created:
            try:
                base.rmdir()  # only if empty: an export that failed leaves no folder behind
            except OSError:
                pass


def remove_leftovers(base: os.PathLike) -> list[Path]:
    """Removes the `.tmp-*` folders that killed exports left under `base` (`<root>/<name>`), logging
    each, and returns them. Holds the name's lock meanwhile, so none of them is being written.

    Raises:
        tfsim.locks.LockHeld: another live process is publishing under this name.
    """
    base = Path(base)
    if not base.is_dir():
        return []
    with locks.folder_lock(base, "export name"):
        removed = sorted(base.glob(".tmp-*"))
        for stale in removed:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            log.info("Removed %s, left by an export that was interrupted.", stale)
    return removed


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _latest_size(base: Path) -> int:
    """The size of the newest version under `base` (0 if none): about what the next one needs."""
    latest = latest_version(base)
    return _tree_size(latest) if latest is not None else 0


def _publish_locked(base: Path, write: Callable[[Path, int], dict],
                    write_extras: Optional[Callable[[Path], None]], written: list) -> Path:
    """`publish`'s work under the name's lock; `written[0]` is set to the bytes written on failure."""
    version = next_version(base)
    work = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        meta = write(work, version)
        meta_dir = work / META_DIR
        meta_dir.mkdir(parents=True, exist_ok=True)
        write_json(meta_dir / "export.json", meta)
        if write_extras is not None:
            write_extras(work)
        while True:  # another process may have taken this version meanwhile
            version_dir = base / str(version)
            try:
                os.rename(work, version_dir)
                break
            except OSError:
                if not version_dir.exists():
                    raise
                version += 1
                meta["version"] = version
                write_json(work / META_DIR / "export.json", meta)
    except BaseException:
        written[0] = _tree_size(work)
        shutil.rmtree(work, ignore_errors=True)
        raise
    return version_dir


STOCK_CONFIG, SCANN_CONFIG = "models.config", "models_scann.config"


def needs_scann(model_folder: os.PathLike) -> bool:
    """Whether the newest version of `<root>/<name>` (the one TF Serving serves) holds ScaNN's
    ops (the `Scann>` namespace its graph names them with), which stock TF Serving lacks."""
    latest = latest_version(model_folder)
    if latest is None:
        return False
    graph = latest / "saved_model.pb"
    return graph.is_file() and b"Scann>" in graph.read_bytes()


def write_serving_configs(root: os.PathLike) -> tuple[Path, Path]:
    """Writes the export root's TF Serving model configs, each atomically (a temporary file renamed):
    `<root>/models.config`, every model stock TF Serving loads (embedders, exact and Hamming
    retrieval models), and `<root>/models_scann.config`, those plus the ScaNN ones (`needs_scann`),
    for a TF Serving built with ScaNN's ops. Models are listed by absolute path.

    Returns:
        (the stock config, the ScaNN config).

    Example:
        docker run -p 8501:8501 -v $PWD/saved_models:$PWD/saved_models tensorflow/serving \\
            --model_config_file=$PWD/saved_models/models.config
    """
    root = Path(root)
    models = sorted(p for p in root.iterdir() if p.is_dir() and version_folders(p))
    scann = {p for p in models if needs_scann(p)}
    written = []
    for name, listed in ((STOCK_CONFIG, [p for p in models if p not in scann]), (SCANN_CONFIG, models)):
        lines = ["model_config_list {"]
        for model in listed:
            lines += ["  config {", f'    name: "{model.name}"', f'    base_path: "{model.resolve()}"',
                      '    model_platform: "tensorflow"', "  }"]
        lines.append("}")
        # (unique temporary names: exports under other names, other locks, may write them at once)
        written.append(write_atomic(root / name, "\n".join(lines) + "\n", unique=True))
    return written[0], written[1]


def warmup_image(size: int) -> bytes:
    """A PNG of `size` x `size` mid-grey pixels: a valid input for any image signature."""
    return tf.io.encode_png(tf.fill([size, size, 3], tf.constant(128, tf.uint8))).numpy()


def write_warmup(export_dir: Path, model_name: str, images: list[bytes], signature: str = "serving_default",
                 input_name: str = "image_bytes") -> Path:
    """`assets.extra/tf_serving_warmup_requests`: PredictionLog records TF Serving replays when it
    loads the version, so the first user request pays no graph tracing or index start-up. One
    request per image, then one with all of them (a batch)."""
    # lazy: tensorflow-serving-api's protos are needed only when warm-up records are written
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    out = Path(export_dir) / "assets.extra" / "tf_serving_warmup_requests"
    out.parent.mkdir(parents=True, exist_ok=True)
    batches = [[image] for image in images] + ([list(images)] if len(images) > 1 else [])
    with tf.io.TFRecordWriter(str(out)) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return out


def pack_bits(codes: tf.Tensor) -> tf.Tensor:
    """`[N, bits]` real codes -> `[N, bits / 8]` uint8, bit = code >= 0, first code in the top bit
    (as `tfsim.index.hamming.pack_codes`)."""
    bits = tf.cast(codes >= 0, tf.int32)
    groups = tf.reshape(bits, [tf.shape(bits)[0], codes.shape[-1] // 8, 8])  # (static: a batch may be empty)
    return tf.cast(tf.reduce_sum(groups * tf.constant([128, 64, 32, 16, 8, 4, 2, 1]), axis=-1), tf.uint8)


def _serving_functions(model: keras.Model, image_size: int, center_crop: float = 1.0, binary_codes: bool = False,
                       max_pixels: int = DEFAULT_MAX_PIXELS):
    def embed_images(images):
        # An empty request gets empty answers (the network itself fails on a batch of 0).
        embeddings = tf.cond(tf.shape(images)[0] > 0, lambda: tf.cast(model(images, training=False), tf.float32),
                             lambda: tf.zeros([0, model.output_shape[-1]], tf.float32))
        if binary_codes:  # learning to hash: the relaxed codes and the packed ones
            return {"embeddings": embeddings, "codes": pack_bits(embeddings)}
        return {"embeddings": embeddings}

    def decode_one(data):
        return preprocess(decode(data, max_pixels), image_size, center_crop)

    def embed_bytes(image_bytes):
        # One image of the request decoded at a time: a request's memory is bounded by one image
        # of at most `max_pixels` (about 11 bytes per pixel at the peak), whatever its batch size.
        images = tf.map_fn(decode_one, image_bytes, parallel_iterations=1,
                           fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))
        return embed_images(images)

    return embed_bytes, embed_images


def export_embedder(model: keras.Model, root: os.PathLike, name: str, image_size: int,
                    metadata: Optional[dict] = None, center_crop: float = 1.0,
                    write_extras: Optional[Callable[[Path], None]] = None, binary_codes: bool = False,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    """Writes a new version of the embedding SavedModel (see module doc).

    Args:
        model: the Keras embedder, input float32 `[N, S, S, 3]` in [0, 255].
        root: export root (e.g. "saved_models").
        name: model name (a folder under root).
        image_size: S.
        center_crop: the evaluation crop `serving_default` applies to each decoded image
            (`tfsim.data.preprocess.preprocess`); recorded in export.json.
        metadata: extra JSON-able metadata stored in `export.json`.
        write_extras: called with the export's folder (complete, loadable, still under its
            temporary name) before the final rename, to add files (the index, under
            `assets.extra/tfsim/`) inside the same atomic step.
        binary_codes: a hashing model (`model.head=hash`): both signatures also return `codes`,
            the packed binary codes (uint8, `bits / 8` bytes per image).
        max_pixels: `serving_default` refuses (InvalidArgumentError naming the size and the
            limit) an image whose header declares more pixels, before decoding it
            (`tfsim.data.preprocess.check_size`); recorded in export.json.

    Returns:
        The final version folder.
    """
    def write(work: Path, version: int) -> dict:
        archive = keras.export.ExportArchive()
        archive.track(model)
        embed_bytes, embed_images = _serving_functions(model, image_size, center_crop, binary_codes, max_pixels)
        archive.add_endpoint("serving_default", embed_bytes,
                             input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        archive.add_endpoint("serve_images", embed_images, input_signature=[
            tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
        archive.write_out(str(work), verbose=False)
        meta = {"format": EXPORT_FORMAT, "name": name, "version": version, "image_size": image_size,
                "center_crop": center_crop, "max_pixels": int(max_pixels),
                "embedding_dim": int(model.output_shape[-1]),
                "binary_codes": binary_codes,
                "signatures": {"serving_default": "image_bytes -> embeddings" + (", codes" if binary_codes else ""),
                               "serve_images": "images -> embeddings" + (", codes" if binary_codes else "")}}
        meta.update(metadata or {})
        write_warmup(work, name, [warmup_image(image_size)])
        return meta

    version_dir = publish(Path(root) / name, write, write_extras)
    log.info("Exported SavedModel to %s", version_dir)
    return version_dir


def read_export(path: os.PathLike) -> dict:
    """The tfsim metadata of an export folder.

    Raises:
        UserInputError: `path` is not a tfsim export.
    """
    path = Path(path)
    meta_file = path / META_DIR / "export.json"
    if not (path / "saved_model.pb").is_file() or not meta_file.is_file():
        hint = ""
        if path.is_dir():
            versions = [str(v) for v, _ in version_folders(path)]
            if versions:
                hint = f" It holds versions {versions}: pass {str(path / versions[-1])!r}."
        raise UserInputError(
            f"{str(path)!r} is not a tfsim export: expected a version folder "
            f"saved_models/<name>/<version>/ holding saved_model.pb and {META_DIR}/export.json.{hint}")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise UserInputError(f"{str(path)!r} has export format {meta.get('format')!r}; expected {EXPORT_FORMAT!r}.")
    return meta
