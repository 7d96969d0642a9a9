"""A data spec -> its images: the one string the evaluate and index commands take for data.

    default                  the shipped Fashion-MNIST subset
    tfds:NAME[:SPLIT]        a TFDS dataset (streamed)
    DIR                      a folder <dir>/<class>/<image>
    FILE                     a list file (`tfsim.data.lists`)
"""

from __future__ import annotations

from pathlib import Path

from tfsim.data import lists, sources
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.sources import ImageSet
from tfsim.errors import UserInputError


def load_source(spec: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """The images named by a data spec (see the module doc); a folder's or list's images above
    `max_pixels` pixels (width x height, from their headers) are skipped undecoded, and listed
    in the set's report with the other files that cannot be used."""
    if spec == "default":
        return sources.load_default()
    if spec.startswith("tfds:"):
        parts = spec.split(":")
        return sources.load_tfds(parts[1], parts[2] if len(parts) > 2 else "train+test", max_pixels=max_pixels)
    path = Path(spec).expanduser()
    if path.is_dir():
        return sources.load_folder(str(path), max_pixels=max_pixels)
    if path.is_file():
        return lists.load_list(str(path), max_pixels=max_pixels)
    raise UserInputError(f"Invalid data {spec!r}: expected a folder <dir>/<class>/<image>, a list file, "
                         "tfds:NAME[:SPLIT] or default.")
