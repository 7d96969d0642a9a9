"""User-facing errors.

`UserInputError` is a `ValueError` raised for bad input a user can fix (config,
paths, data). The CLIs print its message and exit with status 2 instead of a
traceback; everything else is a bug and keeps its traceback.
"""

import contextlib
import errno
import os
import re
import resource
import shutil
from pathlib import Path
from typing import Callable, Optional, Union

__all__ = ["DiskFull", "UserInputError", "disk_full_errno"]


class UserInputError(ValueError):
    """Bad user input: the message says what was wrong, what was expected and how to fix it."""


def tf_error_reason(err: Exception, limit: int = 300) -> str:
    """The reason a TensorFlow op gave (e.g. "Invalid PNG. Failed to initialize decoder."), without
    the context a traced function wraps it in: the "{{function_node ...}}" prefix, the "Graph
    execution error" / "Detected at node" / "<stack traces unavailable>" lines and the trailing
    "[[{{node ...}}]]"; its first line, at most `limit` characters."""
    text = re.sub(r"^(\{\{[^}]*\}\}\s*)+", "", str(getattr(err, "message", None) or err))
    lines = [line.strip() for line in text.splitlines()]
    useful = [line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at node", "<stack traces", "[[", "{{"))]
    return re.sub(r"\s*\[\[\{\{node .*$", "", (useful or [type(err).__name__])[0])[:limit]


def rename_keys(message: str, keys: dict) -> str:
    """`message` with each library argument (`arg` in backticks, or `arg=`) replaced by its config key."""
    for arg, key in keys.items():
        message = re.sub(rf"`{re.escape(arg)}`", f"`{key}`", message)
        message = re.sub(rf"(?<![\w.]){re.escape(arg)}=", f"{key}=", message)
    return message


@contextlib.contextmanager
def config_keys(catch: tuple = (UserInputError,), **keys: str):
    """Re-raises an error from inside the block as a `UserInputError` naming config keys.

    Library functions name their own arguments in their errors (`root`, `margin`); code
    that called them with config values wraps the call, e.g.
    `with config_keys(root="data.path"): sources.load_folder(cfg.data.path)`.
    `catch` says which errors are the user's (by default `UserInputError` only; a loss
    constructor's `ValueError` is about its arguments, so config validation catches those).
    """

    try:
        yield
    except catch as err:
        raise UserInputError(rename_keys(str(err), keys)) from err


class DiskFull(UserInputError):
    """A write found no space left on the device (ENOSPC), or went past the process's file-size limit (EFBIG)."""


def disk_full_errno(err: BaseException) -> Optional[int]:
    """`errno.ENOSPC` or `errno.EFBIG` if `err` says a write ran out of space, else None.

    Python and h5py raise an `OSError` with that errno (Keras' `model.save` too, with no file name);
    TensorFlow's file ops raise `ResourceExhaustedError` (ENOSPC) or `OutOfRangeError` (EFBIG) whose
    message holds the path and the C library's text, so the text is what identifies them.
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG):
        return err.errno
    text = str(getattr(err, "message", None) or err)
    if os.strerror(errno.ENOSPC) in text:  # "No space left on device"
        return errno.ENOSPC
    if os.strerror(errno.EFBIG) in text:  # "File too large"
        return errno.EFBIG
    return None


def size_text(num_bytes: float) -> str:
    """`3.1 MB`-style size (decimal units, as `df -H`)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} TB"


def disk_full_message(code: int, folder: os.PathLike, what: str, needs: Union[int, str, None],
                      after: str = "") -> str:
    """One line for a write of `what` into `folder` that failed with ENOSPC/EFBIG `code`: the folder,
    the space the write needed (`needs`: bytes, an estimate; or a phrase such as "more than 3.1 MB";
    None = unknown), what is free, and `after` (what was kept and what to do next)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    needed = needs if isinstance(needs, str) else f"about {size_text(needs)}" if needs else "more space"
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        shown = "unlimited" if limit == resource.RLIM_INFINITY else size_text(limit)
        return (f"File too large in {str(folder)!r}: writing {what} needs a file of {needed}, above this process's "
                f"file-size limit ({shown}; see `ulimit -f`). Raise the limit{after}")
    try:
        free = size_text(shutil.disk_usage(existing).free)
    except OSError:
        free = "unknown"
    return (f"No space left on device in {str(folder)!r}: writing {what} needs {needed} ({free} free). "
            f"Free some space there{after}")


@contextlib.contextmanager
def writing(folder: os.PathLike, what: str, needs: Union[int, str, Callable[[], Union[int, str, None]], None] = None,
            after: str = " and run the same command again."):
    """Re-raises a disk-full error (see `disk_full_errno`) from inside the block as one `DiskFull` line
    naming `folder` and what `what` needed (`needs`: bytes or a phrase, or a function computing them
    after the failure). Other errors pass through. Temporary files are the caller's to remove (in a `finally`)."""
    try:
        yield
    except Exception as err:
        code = disk_full_errno(err)
        if code is None:
            raise
        size = needs() if callable(needs) else needs
        raise DiskFull(disk_full_message(code, folder, what, size, after)) from None
