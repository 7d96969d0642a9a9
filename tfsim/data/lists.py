"""Image lists: a CSV of your own, or the list files the research datasets ship with.

`load_list(path)` reads one list file and returns an `ImageSet` whose `splits` say which
published split each image belongs to. The format is recognised by the file's name
(`tfsim.data.formats.list_format`; the `format` of the report):

- `*.csv` (yours): rows `path,label[,split]` (header optional); split by the `split` column if any.
- `Ebay_train.txt` / `Ebay_test.txt` / `Ebay_info.txt` (Stanford Online Products): rows
  `image_id class_id super_class_id path`; both `Ebay_train.txt` and `Ebay_test.txt` are read;
  train / test by file (11,318 / 11,316 classes).
- `list_eval_partition.txt` (In-Shop Clothes): rows `image_name item_id evaluation_status` after a
  count and a header line; train / query / gallery.
- `images.txt` (CUB-200-2011): rows `image_id path`, with `image_class_labels.txt`, `classes.txt`,
  `train_test_split.txt` beside it; train / test per image (the classification split).
- `wnids.txt` (Tiny ImageNet): the class ids; `train/<wnid>/images/*`, and `val/val_annotations.txt`
  for `val/images/*`; train / val per image.

Paths in a list are relative to `image_root` if given, else to the first of the list's
folder, its parent, `<parent>/Img` (In-Shop) and `<folder>/images` (CUB) where the first
listed image exists; they are stored absolute. Labels: class ids that are all integers are
ordered numerically (so CUB's classes 1-100 and SOP's 1-11,318 come first, and "the second
half of the classes" is the papers' test half); other labels alphabetically. A row with no
label is skipped (an empty label is no class); an image listed on several rows is kept once,
from its first row (twice in a set, it would be its own nearest neighbour). Both are counted in
the report, with examples.

Which split is the held-out one is `tfsim.data.splits.list_test_classes`: a split that is
class-disjoint (SOP's files, In-Shop's train vs query + gallery, a CSV's column) defines the
test classes; CUB's per-image classification split does not, and the metric-learning
protocol (first 100 classes / last 100) applies instead.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfsim.data.formats import DEFAULT_MAX_PIXELS, FORMATS, dataset_name, list_format
from tfsim.data.sources import ImageSet, check_images, escape_name, not_utf8_report
from tfsim.errors import UserInputError

log = logging.getLogger(__name__)


def _fail(path: Path, line: int, expected: str, got: str) -> UserInputError:
    return UserInputError(f"Invalid list file {str(path)!r}, line {line}: expected {expected}. Received: {got!r}")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise UserInputError(f"Invalid list file {str(path)!r}: not UTF-8 text ({err.reason}).") from None


def _read_csv(path: Path) -> tuple[list[str], list[str], Optional[list[str]]]:
    rows = [r for r in csv.reader(_read_lines(path)) if r and any(c.strip() for c in r)]
    if rows and (rows[0][0].strip().lower() in ("path", "file", "filename", "image")
                 or (len(rows[0]) > 1 and rows[0][1].strip().lower() in ("label", "class"))):
        rows = rows[1:]
    if not rows:
        raise UserInputError(f"Invalid list file {str(path)!r}: no rows. Expected lines of path,label[,split].")
    width = len(rows[0])
    paths, labels, split = [], [], []
    for i, row in enumerate(rows, 1):
        if len(row) != width or width not in (2, 3):
            raise _fail(path, i, f"path,label[,split] with the same number of columns on every line ({width})",
                        ",".join(row))
        paths.append(row[0].strip())
        labels.append(row[1].strip())
        if width == 3:
            split.append(row[2].strip().lower())
    return paths, labels, split or None


def _read_sop(path: Path) -> tuple[list[str], list[str], list[str]]:
    folder = path.parent
    paths, labels, split = [], [], []
    for name, part in (("Ebay_train.txt", "train"), ("Ebay_test.txt", "test")):
        file = folder / name
        if not file.is_file():
            raise UserInputError(f"Stanford Online Products list {str(path)!r}: expected {name} beside it "
                                 f"(the published train/test split). It is not in {str(folder)!r}.")
        lines = [line for line in _read_lines(file) if line.strip()]
        for i, line in enumerate(lines[1:], 2):  # header: image_id class_id super_class_id path
            fields = line.split()
            if len(fields) != 4:
                raise _fail(file, i, "image_id class_id super_class_id path", line)
            paths.append(fields[3])
            labels.append(fields[1])
            split.append(part)
    return paths, labels, split


def _read_inshop(path: Path) -> tuple[list[str], list[str], list[str]]:
    lines = [line for line in _read_lines(path) if line.strip()]
    paths, labels, split = [], [], []
    for i, line in enumerate(lines[2:], 3):  # a count line, then: image_name item_id evaluation_status
        fields = line.split()
        if len(fields) != 3 or fields[2] not in ("train", "query", "gallery"):
            raise _fail(path, i, "image_name item_id train|query|gallery", line)
        paths.append(fields[0])
        labels.append(fields[1])
        split.append(fields[2])
    return paths, labels, split


def _id_table(path: Path, what: str) -> dict[str, str]:
    table = {}
    for i, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise _fail(path, i, what, line)
        table[fields[0]] = fields[1].strip()
    return table


def _read_cub(path: Path) -> tuple[list[str], list[str], Optional[list[str]], dict[str, str]]:
    images = _id_table(path, "image_id path")
    folder = path.parent
    class_file, split_file, names_file = (folder / "image_class_labels.txt", folder / "train_test_split.txt",
                                          folder / "classes.txt")
    classes = _id_table(class_file, "image_id class_id") if class_file.is_file() else None
    is_train = _id_table(split_file, "image_id is_training_image") if split_file.is_file() else None
    names = _id_table(names_file, "class_id class_name") if names_file.is_file() else {}
    paths, labels, split = [], [], []
    for image_id, rel in images.items():
        paths.append(rel)
        if classes is not None:
            if image_id not in classes:
                raise UserInputError(f"CUB list {str(class_file)!r} has no class for image {image_id} ({rel}).")
            labels.append(classes[image_id])
        else:  # "001.Black_footed_Albatross/x.jpg": the class is the folder
            folder_name = Path(rel).parts[0]
            labels.append(folder_name.split(".", 1)[0] if "." in folder_name else folder_name)
            names.setdefault(labels[-1], folder_name)
        if is_train is not None:
            split.append("train" if is_train.get(image_id) == "1" else "test")
    return paths, labels, split if is_train is not None else None, names


def _read_tiny_imagenet(path: Path) -> tuple[list[str], list[str], list[str]]:
    """Tiny ImageNet: `wnids.txt` names the 200 classes; `train/<wnid>/images/*.JPEG` are the
    training images and `val/val_annotations.txt` (`file wnid x y w h`) labels `val/images/`."""
    root = path.parent
    wnids = [line.strip() for line in _read_lines(path) if line.strip()]
    paths, labels, split = [], [], []
    for wnid in wnids:
        for f in sorted((root / "train" / wnid / "images").glob("*")):
            if f.suffix.lower() in (".jpeg", ".jpg", ".png") and not f.name.startswith("."):
                paths.append(str(f.relative_to(root)))
                labels.append(wnid)
                split.append("train")
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        for i, line in enumerate(_read_lines(annotations), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise _fail(annotations, i, "file wnid [x y w h]", line)
            paths.append(f"val/images/{fields[0]}")
            labels.append(fields[1])
            split.append("val")
    return paths, labels, split


def _image_root(path: Path, first: str, image_root: Optional[str], candidates: Sequence[Path]) -> Path:
    if image_root is not None:
        root = Path(image_root).expanduser().resolve()
        if not root.is_dir():
            raise UserInputError(f"Invalid value for `image_root`: expected the folder the list's paths are relative "
                                 f"to. Received: image_root={image_root!r}, which is not a folder.")
        return root
    if Path(first).is_absolute():
        return Path("/")
    for root in candidates:
        if (root / first).is_file():
            return root.resolve()
    raise UserInputError(
        f"Cannot find the images of list {str(path)!r}: its first image {first!r} is not under "
        f"{[str(c) for c in candidates]}. Set `image_root` to the folder its paths are relative to.")


def load_list(path: str, image_root: Optional[str] = None, check_files: bool = True,
              on_bad_file: str = "skip", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """The images of a list file (see the module doc for the formats).

    Args:
        path: the list file.
        image_root: the folder the list's relative paths start from (default: found, see
            the module doc).
        check_files: decode every image once, as the pipeline will (see `check_images`).
        on_bad_file: "skip" (listed in the report) or "error".
        max_pixels: images whose header declares more pixels (width x height) are skipped
            without being decoded (with `check_files`), and the pipeline refuses them.

    Returns:
        An ImageSet with absolute `paths`, `splits` (or None when the list has no split) and a
        `report` (images per class and per split, skipped and missing files with the reason,
        rows without a label and duplicate rows: counted, with examples).

    Raises:
        UserInputError: an unknown format, a malformed line (named by number), images not
            found, fewer than 2 classes, or a bad image with `on_bad_file="error"`.
    """
    if on_bad_file not in ("skip", "error"):
        raise UserInputError(f"Invalid value for `on_bad_file`: expected 'skip' or 'error'. "
                             f"Received: on_bad_file={on_bad_file!r}")
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise UserInputError(f"Invalid value for `path`: expected a list file, one of {list(FORMATS)}. "
                             f"Received: path={path!r}, which is not a file.")
    names: dict[str, str] = {}
    fmt, dataset = list_format(str(file)), dataset_name(str(file))
    if fmt == "csv":
        paths, labels, split = _read_csv(file)
        candidates = [file.parent]
    elif fmt == "stanford_online_products":
        paths, labels, split = _read_sop(file)
        candidates = [file.parent]
    elif fmt == "inshop":
        paths, labels, split = _read_inshop(file)
        candidates = [file.parent, file.parent.parent, file.parent.parent / "Img"]
    elif fmt == "cub200":
        paths, labels, split, names = _read_cub(file)
        candidates = [file.parent / "images", file.parent]
    elif fmt == "tiny_imagenet":
        paths, labels, split = _read_tiny_imagenet(file)
        candidates = [file.parent]
    else:
        raise UserInputError(f"Invalid value for `path`: expected a list file, one of {list(FORMATS)}. "
                             f"Received: path={path!r}.")
    if not paths:
        raise UserInputError(f"List file {str(file)!r} lists no images.")
    root = _image_root(file, paths[0], image_root, candidates)
    files = [Path(p) if Path(p).is_absolute() else root / p for p in paths]
    files, labels, split, row_notes = _usable_rows(file, files, labels, split)

    # Classes: numeric ids in numeric order (the papers' class order), names in alphabetical order.
    unique = sorted(set(labels), key=lambda c: (0, int(c), c) if c.lstrip("-").isdigit() else (1, 0, c))
    index = {c: i for i, c in enumerate(unique)}
    label_ids = np.array([index[c] for c in labels], np.int32)
    kept, skipped, missing = check_images(files, check_files, max_pixels)
    if missing:
        log.warning("%d listed image(s) do not exist, e.g. %s.", len(missing), missing[0])
    problems = [{"path": p, "reason": "listed but missing"} for p in missing] + skipped
    if problems and on_bad_file == "error":
        listed = "; ".join(f"{s['path']}: {s['reason']}" for s in problems[:5])
        raise UserInputError(f"{len(problems)} listed image(s) of {str(file)!r} cannot be used: {listed}"
                             f"{' ...' if len(problems) > 5 else ''}. Fix the list or the files, or skip them with "
                             "on_bad_file='skip'.")
    rows = np.flatnonzero(kept)
    class_names = tuple(names.get(c, c) for c in unique)
    split_arr = None if split is None else np.array(split)[rows]
    abs_paths = np.array([str(files[r]) for r in rows])
    ids = np.array([escape_name(p) for p in abs_paths])
    present = np.unique(label_ids[rows])
    if len(present) < 2:
        raise UserInputError(f"List file {str(file)!r} has {len(present)} class(es) with usable images; "
                             "expected at least 2.")
    report = {"list": escape_name(str(file)), "image_root": escape_name(str(root)), "format": fmt,
              "images": int(len(rows)),
              "images_per_class": {class_names[c]: int(n)
                                   for c, n in zip(*np.unique(label_ids[rows], return_counts=True))},
              "skipped": problems, "checked": check_files, "max_pixels": max_pixels, **row_notes}
    if split_arr is not None:
        report["images_per_split"] = {s: int(n) for s, n in zip(*np.unique(split_arr, return_counts=True))}
    not_utf8 = [i for p, i in zip(abs_paths, ids) if i != p]
    if not_utf8:
        report["names_not_utf8"] = not_utf8_report(not_utf8)
    return ImageSet(labels=label_ids[rows], ids=ids, class_names=class_names, paths=abs_paths,
                    name=dataset, report=report, splits=split_arr, max_pixels=max_pixels)


def _usable_rows(file: Path, files: list[Path], labels: list[str], split: Optional[list[str]]
                 ) -> tuple[list[Path], list[str], Optional[list[str]], dict]:
    """The rows that name an image once, with a label: rows with an empty label are dropped (an
    empty label is no class), and an image listed again is kept from its first row only. Returns
    the kept rows and the report entries of what was dropped (counts and a few examples)."""
    def row(k: int) -> str:
        return f"label {labels[k]!r}" + (f", split {split[k]!r}" if split is not None else "")

    keep, no_label, duplicates, first = [], [], [], {}
    for i, (f, label) in enumerate(zip(files, labels)):
        if not label:
            no_label.append(escape_name(str(f)))
            continue
        key = os.path.normpath(str(f))
        if key in first:
            reason = f"listed again ({row(i)}; first row: {row(first[key])}): kept once, from its first row"
            duplicates.append({"path": escape_name(str(f)), "reason": reason})
            continue
        first[key] = i
        keep.append(i)
    notes = {}
    if no_label:
        log.warning("%d row(s) of %s have no label and are skipped, e.g. %s.", len(no_label), file, no_label[0])
        notes["rows_without_label"] = {"count": len(no_label), "examples": no_label[:5],
                                       "note": "skipped: a row with an empty label names no class"}
    if duplicates:
        log.warning("%d row(s) of %s list an image already listed; each image is kept once, e.g. %s.",
                    len(duplicates), file, duplicates[0]["path"])
        notes["duplicate_rows"] = {"count": len(duplicates), "examples": duplicates[:5],
                                   "note": "each image kept once, from its first row"}
    if len(keep) == len(files):
        return files, labels, split, notes
    return ([files[i] for i in keep], [labels[i] for i in keep],
            None if split is None else [split[i] for i in keep], notes)
