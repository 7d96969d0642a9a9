"""Shared CLI plumbing: logging set-up and user-error handling.

A `UserInputError` (bad config, path or data) is printed as one line on stderr with
exit status 2 and no traceback; so is an image the decoder refused above the pixel limit
(`tfsim.data.preprocess.check_size`), and a full disk (ENOSPC, or EFBIG past `ulimit -f`) that the
writer did not already report as `tfsim.errors.DiskFull`, whether Python, Keras (an `OSError`
with no file name) or TensorFlow (`ResourceExhaustedError` / `OutOfRangeError` with the path in
its message) raised it: one line naming the file or folder. Any other OS error on a path
(permissions, a file where a folder should be) is one line naming the path, exit status 1;
anything else is a bug and keeps its traceback.

The commands parse their arguments and load their config before they import TensorFlow
(about 6 s), so that a mistake in either is reported at once: nothing here imports it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from typing import Callable

from tfsim import config
from tfsim.errors import UserInputError, disk_full_errno


def quiet_tensorflow() -> None:
    """Silences TensorFlow's C++ log chatter, e.g. cuInit errors on CPU-only machines (override by
    setting TF_CPP_MIN_LOG_LEVEL)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class ListConfigs(argparse.Action):
    """`--list-configs`: prints each shipped preset with its one-line description, and exits (as `--help` does)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="list the shipped presets (--config NAME) with what each is for, and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        described = config.preset_descriptions()
        width = max(map(len, described))
        print("Presets (--config NAME; or the path of a JSON config file, e.g. {\"base\": NAME, ...}):")
        for name, description in described.items():
            print(f"  {name:<{width}}  {description}")
        parser.exit()


def run(main: Callable[[list[str]], int], argv: list[str] | None = None) -> None:
    """Runs `main(argv)` and exits with its status; user errors exit 2 with a clear message."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        status = main(sys.argv[1:] if argv is None else argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        refused = _refused_image(err)
        if refused:  # an image the decoder refused mid-run (a file replaced after loading, a TFDS image)
            print(f"error: {refused}", file=sys.stderr)
            sys.exit(2)
        code = disk_full_errno(err)
        if code is None:
            if isinstance(err, OSError) and err.filename:
                _path_error(err)
            raise
        print(f"error: {_disk_full_line(err, code)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)


def _disk_full_line(err: BaseException, code: int) -> str:
    """One line for a full disk the writer did not report itself: the path if the error names one."""
    path = getattr(err, "filename", None)
    if not path:  # TensorFlow: "{{function_node ...}} /path/to/file.tempstate123; No space left on device"
        found = re.search(r"(?:^|\s)(/[^\s;'\"]+)", str(getattr(err, "message", None) or err))
        path = found.group(1) if found else None
    where = f" while writing {str(os.path.dirname(path) or path)!r} ({os.path.basename(path)})" if path else ""
    fix = ("free some space there and run the same command again" if code == errno.ENOSPC else
           "raise the file-size limit (`ulimit -f`) and run the same command again")
    return f"{os.strerror(code)}{where}: {fix}."


def _path_error(err: OSError) -> None:
    """A path the machine refused (permissions, a file where a folder should be): one line naming it."""
    print(f"error: {err.strerror or err}: {err.filename!r}" + (f" -> {err.filename2!r}" if err.filename2 else ""),
          file=sys.stderr)
    sys.exit(1)



def _refused_image(err: BaseException) -> str | None:
    """The line of TensorFlow's error saying the decoder refused an image above the pixel limit
    (`tfsim.data.preprocess.check_size`), or None."""
    text = str(getattr(err, "message", None) or err)
    for line in text.splitlines():
        if "refused before decoding" in line:
            line = line.strip()
            line = line[line.index("Image"):] if "Image" in line else line
            return line.rstrip("]")
    return None
