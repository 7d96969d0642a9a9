"""Writing files so that a reader never sees half of one, and finding numbered version folders.

    with replacing(path) as tmp:     write `tmp` (`.tmp-<name>` beside `path`) any way you like;
        np.savez(tmp, ...)           it is renamed to `path` when the block ends without an error
                                     and removed when it does not
    write_atomic(path, data)         bytes or text, the same way
    write_json(path, data)           indented JSON, the same way
    version_folders(base)            `(version, folder)` of `<base>/<integer>/`, oldest first
    latest_version(base)             the newest of them, or None

A rename within one folder is atomic on POSIX: an interruption leaves the old file or the new
one, never a mix. The temporary name starts with `.tmp-`, so `tfsim.runs.remove_temporaries`
finds what a killed process left (holding the folder's lock, nothing else is writing it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Iterator, Optional, Union

_VERSION = re.compile(r"\d+")


def temporary_name(path: os.PathLike, unique: bool = False) -> Path:
    """`.tmp-<name>` beside `path`; with `unique`, `.tmp-<8 hex>-<name>` (for a file that processes
    holding different locks may write at once, e.g. an export root's model configs; the name stays
    last so writers that go by its suffix, such as `np.savez` or Keras, still see it)."""
    path = Path(path)
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}" if unique else f".tmp-{path.name}")


@contextlib.contextmanager
def replacing(path: os.PathLike, unique: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `path` (`temporary_name`) and renames it to `path` when the
    block ends; on an error the temporary file is removed and `path` is left as it was.

    Example:
        >>> with replacing(run_dir / "whitening.npz") as tmp:
        ...     np.savez(tmp, mean=mean, projection=projection)
    """
    path = Path(path)
    tmp = temporary_name(path, unique)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_file() or tmp.is_symlink():
            tmp.unlink()


def write_atomic(path: os.PathLike, data: Union[bytes, str], unique: bool = False) -> Path:
    """Writes `data` (bytes, or text as UTF-8) to `path` through a temporary file (`replacing`)."""
    path = Path(path)
    with replacing(path, unique) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


def write_json(path: os.PathLike, data, unique: bool = False) -> Path:
    """`data` as indented JSON (with a final newline) at `path`, atomically (`write_atomic`)."""
    return write_atomic(path, json.dumps(data, indent=2) + "\n", unique)


def version_folders(base: os.PathLike) -> list[tuple[int, Path]]:
    """`(version, folder)` of every integer-named folder under `base` (`<root>/<name>/<version>/`,
    as TF Serving numbers them), oldest first; empty when `base` is no folder."""
    base = Path(base)
    if not base.is_dir():
        return []
    found = [(int(p.name), p) for p in base.iterdir() if _VERSION.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda item: item[0])


def latest_version(base: os.PathLike) -> Optional[Path]:
    """The folder of the highest version under `base` (`version_folders`), or None."""
    found = version_folders(base)
    return found[-1][1] if found else None
