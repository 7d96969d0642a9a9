"""Where labelled images come from: the shipped default set, an image folder, or TFDS.

Every source returns an `ImageSet`: labels, ids, class names, and either the
decoded images in memory (`images`, uint8 `[N, H, W, C]`) or image file paths
(`paths`) decoded lazily by the tf.data pipeline. Downstream code (splits,
samplers, pipelines) only sees `ImageSet`s.
"""

from __future__ import annotations

import dataclasses
import logging
import errno
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.errors import UserInputError, tf_error_reason

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DEFAULT_DATASET = "fashion_mnist_small"


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Labelled images, in memory or on disk.

    Attributes:
        labels: int32 `[N]` indices into `class_names`.
        ids: str `[N]` stable image ids (file paths or "<dataset>:<row>").
        class_names: name of each label index.
        images: uint8 `[N, H, W, C]` decoded images, or None when `paths` is set.
        paths: str `[N]` image files, or None when `images` is set.
        name: dataset name, for logs and run metadata.
        report: what the source found while loading (`load_folder`: images per class,
            skipped files with the reason), or None.
        splits: str `[N]` the published split of each image ("train", "test", "query",
            "gallery") when the source has one (`tfsim.data.lists`), else None.
        max_pixels: the largest image (width x height) the set's files were checked against
            and are decoded with (`tfsim.data.preprocess.decode`): the pipeline refuses a
            larger one, so a set loaded with a raised limit is also decoded with it.

    File names that are not UTF-8 (written by another system): `paths` keep them exactly
    (Python's surrogate-escaped str, turned back into the file's bytes with `os.fsencode`
    wherever a path meets TensorFlow), while `ids`, `class_names` and the report show the
    bytes escaped (`escape_name`), so every id and name is valid UTF-8 in JSON, TF string
    tensors, TensorBoard and the index.
    """

    labels: np.ndarray
    ids: np.ndarray
    class_names: tuple[str, ...]
    images: Optional[np.ndarray] = None
    paths: Optional[np.ndarray] = None
    name: str = "images"
    report: Optional[dict] = dataclasses.field(default=None, compare=False, repr=False)
    splits: Optional[np.ndarray] = dataclasses.field(default=None, compare=False, repr=False)
    max_pixels: int = dataclasses.field(default=DEFAULT_MAX_PIXELS, compare=False, repr=False)

    def __post_init__(self):
        if (self.images is None) == (self.paths is None):
            raise ValueError("An ImageSet holds exactly one of `images` or `paths`.")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: np.ndarray) -> "ImageSet":
        """The images at `rows`, same class names."""
        return dataclasses.replace(
            self, labels=self.labels[rows], ids=self.ids[rows],
            images=None if self.images is None else self.images[rows],
            paths=None if self.paths is None else self.paths[rows],
            splits=None if self.splits is None else self.splits[rows])

    def load_images(self, rows: Sequence[int]) -> list[np.ndarray]:
        """Decoded uint8 images `[H, W, C]` at `rows` (for pictures, not for training), decoded by
        `tfsim.data.preprocess.decode` as the pipeline and the SavedModel decode them (PIL's JPEG
        and CMYK conversions differ by a few levels)."""
        if self.images is not None:
            return [self.images[r] for r in rows]
        from tfsim.data.preprocess import decode_file  # lazy: preprocess imports TensorFlow (listing files does not)
        return [decode_file(os.fsencode(str(self.paths[r])), self.max_pixels).numpy() for r in rows]


def load_default() -> ImageSet:
    """The embedded default dataset: 600 images per class of Fashion-MNIST (MIT, Zalando SE)."""
    assets = resources.files("tfsim.data") / "assets"
    with resources.as_file(assets / f"{DEFAULT_DATASET}.npz") as path, np.load(path) as npz:
        labels = npz["labels"].astype(np.int32)
        return ImageSet(labels=labels,
                        ids=np.array([f"{DEFAULT_DATASET}:{i}" for i in npz["source_index"]]),
                        class_names=tuple(str(c) for c in npz["class_names"]),
                        images=npz["images"], name=DEFAULT_DATASET)


def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def escape_name(name: str) -> str:
    """`name` as valid UTF-8 text: the bytes of a file name that is not UTF-8 (which Python
    holds as lone surrogates, "caf\\udce9") written as `\\xNN` ("caf\\xe9"); other names unchanged."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def size_problem(path: os.PathLike, max_pixels: int, limit_name: str = "data.max_pixels",
                 data: Optional[bytes] = None) -> Optional[str]:
    """Why `path` is refused before decoding (its headers declare more than `max_pixels` pixels to
    decode: `tfsim.data.preprocess.header_size`, which counts every frame of a GIF), or None;
    `limit_name` names the setting in the reason. `data`: the file's bytes, if already read."""
    from tfsim.data.preprocess import header_size  # lazy: preprocess imports TensorFlow

    if not max_pixels:
        return None
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None  # (unreadable: the caller's read says why)
    width, height, frames, pixels = header_size(data)
    if pixels <= max_pixels:
        return None
    animated = f" in {frames} frames ({pixels / 1e6:.1f} megapixels to decode)" if frames > 1 else ""
    return (f"{width} x {height} = {width * height / 1e6:.1f} megapixels{animated}, above {limit_name} = "
            f"{max_pixels:,} ({max_pixels / 1e6:g} megapixels): not decoded")


_DECODERS: dict = {}  # max_pixels -> the traced check-and-decode of one file's bytes (`_decoder`)


def _decoder(max_pixels: int):
    """`preprocess.decode` of one file's bytes as one traced TF function (made once per limit): run
    op by op, its header checks cost about 7 ms a file, several times the decoding of a small image."""
    import tensorflow as tf  # lazy: only decoding needs TensorFlow

    from tfsim.data.preprocess import decode  # lazy: as above
    if max_pixels not in _DECODERS:
        _DECODERS[max_pixels] = tf.function(lambda data: tf.shape(decode(data, max_pixels)),
                                            input_signature=[tf.TensorSpec([], tf.string)])
    return _DECODERS[max_pixels]


def _decode_problem(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """Why the pipeline could not decode `path` (None if it can). The size in the file's header
    is checked first: an image above `max_pixels` is never decoded."""
    import tensorflow as tf  # lazy: only decoding needs TensorFlow

    try:
        data = path.read_bytes()
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    if not data:
        return "empty file (0 bytes)"
    problem = size_problem(path, max_pixels, data=data)  # the headers only, before anything is decoded
    if problem is not None:
        return problem
    try:
        _decoder(max_pixels)(tf.constant(data))  # (the decoder checks the header's size again, in TF)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        return "not a decodable image: " + tf_error_reason(err, 200)
    return None


def check_images(files: Sequence[Path], check_files: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[dict], list[str]]:
    """Which of `files` the pipeline can use: `(kept [N] bool, skipped [{path, reason}], missing [path])`.

    Missing files are always found; with `check_files` every existing file's header is read
    (a file above `max_pixels` pixels is skipped undecoded) and every other one is decoded once
    as the pipeline will decode it. Paths in `skipped` and `missing` are `escape_name`d.
    """
    kept = np.zeros(len(files), bool)
    skipped, missing = [], []
    exists = [f.is_file() for f in files]
    problems = decode_problems([f for f, e in zip(files, exists) if e], max_pixels) if check_files else None
    j = 0
    for i, f in enumerate(files):
        if not exists[i]:
            missing.append(escape_name(str(f)))
            continue
        problem = problems[j] if problems is not None else None
        j += 1
        if problem is not None:
            skipped.append({"path": escape_name(str(f)), "reason": problem})
            continue
        kept[i] = True
    return kept, skipped, missing


def decode_problems(files: Sequence[Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Optional[str]]:
    """`_decode_problem` of every file, in order, decoded on all cores (TF's decoders release
    the GIL, so threads run them in parallel)."""

    chunk = 64  # files per task: a task per file costs more than decoding a small image
    if files:
        _decoder(max_pixels).get_concrete_function()  # (traced here, once, not by the first threads together)
    if len(files) <= chunk:
        return [_decode_problem(f, max_pixels) for f in files]
    chunks = [files[i:i + chunk] for i in range(0, len(files), chunk)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return [p for part in pool.map(lambda fs: [_decode_problem(f, max_pixels) for f in fs], chunks)
                for p in part]


def _broken_link(path: Path) -> Optional[str]:
    """Why the symbolic link `path` leads to nothing (None when it is not a broken link)."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
        return None
    except OSError as err:
        try:
            target = escape_name(os.readlink(path))
        except OSError:
            target = "?"
        if err.errno == errno.ELOOP:
            return f"symbolic link loop (-> {target!r}): links that lead back to themselves"
        if err.errno == errno.ENOENT:
            return f"dangling symbolic link: its target {target!r} does not exist"
        return f"symbolic link to {target!r}, which cannot be reached ({err.strerror})"


def load_folder(root: str, check_files: bool = True, on_bad_file: str = "skip",
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """Images laid out as `root/<class name>/.../<image>` (jpg, png, bmp, gif).

    Classes are the top-level sub-folders in sorted order; a class's images are found
    recursively inside its folder (e.g. Tiny ImageNet's `<wnid>/images/*.JPEG`). Hidden
    files and folders (`.DS_Store`, `._x.jpg`, `.cache/`) are ignored and counted. With
    `check_files`, every image's header is read first (one whose width x height is above
    `max_pixels` is skipped without being decoded: a small file can declare a huge image) and
    every other one is decoded once as the pipeline will decode it: files that cannot be
    (empty, truncated beyond repair, not an image) are skipped and listed, or stop the load
    with `on_bad_file="error"`. Symbolic links to images and class folders are followed; a
    broken one (its target gone, or a loop of links) is skipped and listed the same way. Names
    that are not UTF-8 are loaded (see `ImageSet`) and counted. Paths are absolute. What was
    found is in the set's `report` (images per class, skipped files with the reason, hidden
    files ignored, names that are not UTF-8).

    Raises:
        UserInputError: the folder does not exist, holds fewer than 2 classes with images,
            or (with `on_bad_file="error"`) holds an image the pipeline cannot use.
    """
    if on_bad_file not in ("skip", "error"):
        raise UserInputError(f"Invalid value for `on_bad_file`: expected 'skip' or 'error'. "
                             f"Received: on_bad_file={on_bad_file!r}")
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        raise UserInputError(
            f"Invalid value for `root`: expected a folder laid out as <root>/<class>/<image>. "
            f"Received: root={root!r}, which is not a folder.")
    classes, paths, labels, skipped, hidden, empty_classes = [], [], [], [], 0, []
    found: list[tuple[str, list[Path]]] = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():  # a broken link here may have been meant as a class folder
            problem = _broken_link(entry)
            if problem is not None:
                skipped.append({"path": escape_name(str(entry)), "reason": problem})
            continue
        files = []
        for f in sorted(entry.rglob("*")):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if _hidden(f, base):
                hidden += f.is_file()
                continue
            if not f.is_file():
                problem = _broken_link(f)
                if problem is not None:
                    skipped.append({"path": escape_name(str(f)), "reason": problem})
                continue
            files.append(f)
        found.append((entry.name, files))
    problems = iter(decode_problems([f for _, files in found for f in files], max_pixels) if check_files else [])
    for name, files in found:
        good = []
        for f in files:
            problem = next(problems) if check_files else None
            if problem is not None:
                skipped.append({"path": escape_name(str(f)), "reason": problem})
            else:
                good.append(f)
        if not good:
            empty_classes.append(escape_name(name))
            continue
        labels += [len(classes)] * len(good)
        paths += [str(f) for f in good]
        classes.append(escape_name(name))
    skipped.sort(key=lambda s: s["path"])
    if skipped and on_bad_file == "error":
        listed = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        raise UserInputError(
            f"{len(skipped)} image file(s) in {escape_name(str(base))!r} cannot be decoded: {listed}"
            f"{' ...' if len(skipped) > 5 else ''}. Remove or fix them, or skip them with on_bad_file='skip'.")
    if skipped:
        log.warning("Skipped %d image file(s) that cannot be used: %s%s (all of them in the data report).",
                    len(skipped), "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:3]),
                    " ..." if len(skipped) > 3 else "")
    if len(classes) < 2:
        raise UserInputError(
            f"Invalid value for `root`: expected at least 2 class sub-folders holding "
            f"{'/'.join(IMAGE_SUFFIXES)} images in {escape_name(root)!r}. Found {len(classes)}. "
            "Lay the images out as <root>/<class>/<image>.")
    ids = [escape_name(p) for p in paths]
    report = {"root": escape_name(str(base)), "images": len(paths),
              "images_per_class": {c: labels.count(i) for i, c in enumerate(classes)},
              "skipped": skipped, "hidden_ignored": hidden, "classes_without_images": empty_classes,
              "checked": check_files, "max_pixels": max_pixels}
    not_utf8 = [i for p, i in zip(paths, ids) if i != p]
    if not_utf8:
        report["names_not_utf8"] = not_utf8_report(not_utf8)
    return ImageSet(labels=np.array(labels, np.int32), ids=np.array(ids), class_names=tuple(classes),
                    paths=np.array(paths), name=escape_name(base.name), report=report, max_pixels=max_pixels)


def not_utf8_report(escaped: Sequence[str]) -> dict:
    """The report entry of images whose path is not UTF-8 (loaded, shown escaped)."""
    log.info("%d image path(s) are not UTF-8, e.g. %s: loaded; their ids and class names show those bytes as "
             "\\xNN.", len(escaped), escaped[0])
    return {"count": len(escaped), "examples": list(escaped[:5]),
            "note": "loaded under their exact names; ids, class names and this report show the bytes that are "
                    "not UTF-8 as \\xNN"}


def _image_suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes (by their magic number)."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"GIF":
        return ".gif"
    if data[:2] == b"BM":
        return ".bmp"
    return ".img"


def load_tfds(name: str, split: str = "train+test", data_dir: Optional[str] = None,
              manual_dir: Optional[str] = None, cache_dir: Optional[str] = None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """A TFDS image-classification dataset (cars196, caltech_birds2011, stanford_online_products, ...),
    streamed: never decoded as a whole into memory.

    The first load writes every image's *encoded* bytes, as TFDS stores them (no decoding, no
    re-encoding), to one file per image under `cache_dir` (default: beside TFDS's own files,
    `<data_dir>/tfsim_images/<name>/<version>/<split>/`, each part of "train+test" apart), with
    the labels, committed by an atomic rename; later loads read the labels only. The set's
    `splits` say which part each image came from (SOP's class-disjoint train/test then
    defines the held-out classes; see `splits.list_test_classes`). The set is then file-backed like an image
    folder: the pipeline decodes the images of each batch, P x K sampling picks rows by index,
    and memory holds the label and path arrays only (SOP: 120,053 rows). Download works where
    the network allows it; otherwise place the original archives in `manual_dir` (TFDS checks
    their sha256). The images are not checked on loading; the pipeline refuses one above
    `max_pixels` pixels when it decodes it.

    Raises:
        UserInputError: the dataset cannot be prepared (unknown name, no archives), or has no
            `image` and `label` features.
    """
    import tensorflow_datasets as tfds  # lazy: TFDS is imported only for TFDS sources (seconds)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as err:  # TFDS raises many types for missing data / network
        raise UserInputError(
            f"Could not prepare TFDS dataset {name!r} (split {split!r}): {err}. "
            "Check `name`, or put the original archives in `manual_dir`.") from err
    features = builder.info.features
    label_key = "label" if "label" in features else ("class_id" if "class_id" in features else None)
    if "image" not in features or label_key is None:
        raise UserInputError(f"Invalid value for `name`: expected a TFDS dataset with `image` and `label` features. "
                             f"Received: name={name!r}, whose features are {sorted(features.keys())}.")
    names = tuple(features[label_key].names)
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    folder = (Path(cache_dir) if cache_dir else
              Path(root).expanduser() / "tfsim_images" / builder.info.name / str(builder.info.version))
    labels, paths, splits, caches = [], [], [], []
    for part in (p.strip() for p in split.split("+")):  # "train+test": each part cached and labelled apart
        target = folder / part.replace("/", "_").replace(":", "_")
        if not (target / "labels.npy").is_file():
            _write_encoded(builder, name, part, label_key, target)
        part_labels = np.load(target / "labels.npy")
        suffixes = (target / "suffixes.txt").read_text().split()
        labels.append(part_labels)
        paths += [str((target / f"{i:07d}{sfx}").resolve()) for i, sfx in enumerate(suffixes)]
        splits += [part.split("[")[0]] * len(part_labels)
        caches.append(str(target.resolve()))
    paths_arr = np.array(paths)
    return ImageSet(labels=np.concatenate(labels).astype(np.int32), ids=paths_arr, class_names=names,
                    paths=paths_arr, name=name, splits=np.array(splits), max_pixels=max_pixels,
                    report={"tfds": name, "split": split, "images": len(paths), "cache": caches})


def _write_encoded(builder, name: str, part: str, label_key: str, target: Path) -> None:
    """One split's encoded images, one file each, and their labels, committed by one rename."""
    import tensorflow_datasets as tfds  # lazy: TFDS is imported only for TFDS sources (seconds)

    try:
        ds = builder.as_dataset(split=part, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as err:
        raise UserInputError(f"Could not read split {part!r} of TFDS dataset {name!r}: {err}.") from err
    import tensorflow as tf  # lazy: as TFDS (listing a folder needs no TensorFlow)
    options = tf.data.Options()
    options.autotune.enabled = False  # (its deleted iterator must not wait: `pipeline.without_autotune`)
    ds = ds.with_options(options)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    labels, suffixes = [], []
    for i, ex in enumerate(ds.as_numpy_iterator()):
        data = ex["image"]
        suffixes.append(_image_suffix(data))
        (tmp / f"{i:07d}{suffixes[-1]}").write_bytes(data)
        labels.append(int(ex[label_key]))
    np.save(tmp / "labels.npy", np.array(labels, np.int32))
    (tmp / "suffixes.txt").write_text("\n".join(suffixes) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    log.info("Wrote the %d encoded images of %s[%s] to %s.", len(labels), name, part, target)
