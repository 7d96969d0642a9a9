"""Naming images: `load_images` loads one source kind (what the config's `data` section names), and
`load_source` reads the one string the evaluate and index commands take for data:

    default                  the shipped Fashion-MNIST subset
    tfds:NAME[:SPLIT]        a TFDS dataset (streamed)
    DIR                      a folder <dir>/<class>/<image>
    FILE                     a list file (`tfsim.data.lists`)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tfsim.data import lists, sources
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.sources import ImageSet
from tfsim.errors import UserInputError


def load_images(source: str, path: Optional[str] = None, image_root: Optional[str] = None,
                tfds_name: Optional[str] = None, tfds_split: str = "train+test", data_dir: Optional[str] = None,
                manual_dir: Optional[str] = None, on_bad_file: str = "skip",
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """The images of one source: "default" (the shipped set), "folder" (`path`/<class>/<image>),
    "list" (the list file `path`, images under `image_root`) or "tfds" (`tfds_name`, `tfds_split`)."""
    if source == "default":
        return sources.load_default()
    if source == "folder":
        return sources.load_folder(path, on_bad_file=on_bad_file, max_pixels=max_pixels)
    if source == "list":
        return lists.load_list(path, image_root, on_bad_file=on_bad_file, max_pixels=max_pixels)
    if source == "tfds":
        return sources.load_tfds(tfds_name, tfds_split, data_dir, manual_dir, max_pixels=max_pixels)
    raise UserInputError(f"Invalid value for `source`: expected one of ['default', 'folder', 'list', 'tfds']. "
                         f"Received: source={source!r}")


def load_source(spec: str, max_pixels: int = DEFAULT_MAX_PIXELS, check_files: bool = True) -> ImageSet:
    """The images named by a data spec (see the module doc); a folder's or list's images above
    `max_pixels` pixels (width x height, from their headers) are skipped undecoded, and listed
    in the set's report with the other files that cannot be used. With `check_files=False` a
    folder or list file is only listed (no file is opened: the Beam embedding job's workers
    decode them and set aside those that fail, `tfsim.catalogue`)."""
    if spec == "default":
        return load_images("default")
    if spec.startswith("tfds:"):
        parts = spec.split(":")
        return load_images("tfds", tfds_name=parts[1], tfds_split=parts[2] if len(parts) > 2 else "train+test",
                           max_pixels=max_pixels)
    path = Path(spec).expanduser()
    if path.is_dir():
        return sources.load_folder(str(path), check_files=check_files, max_pixels=max_pixels)
    if path.is_file():
        return lists.load_list(str(path), check_files=check_files, max_pixels=max_pixels)
    raise UserInputError(f"Invalid data {spec!r}: expected a folder <dir>/<class>/<image>, a list file, "
                         "tfds:NAME[:SPLIT] or default.")
