"""Shared CLI plumbing: logging set-up and user-error handling.

A `UserInputError` (bad config, path or data) is printed as one line on stderr with
exit status 2 and no traceback; an OS error on a path (permissions, a full disk) as one line
naming the path, exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from tfsim.errors import UserInputError


def quiet_tensorflow() -> None:
    """Silences TensorFlow's C++ log chatter, e.g. cuInit errors on CPU-only machines (override by setting TF_CPP_MIN_LOG_LEVEL)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(main: Callable[[list[str]], int], argv: list[str] | None = None) -> None:
    """Runs `main(argv)` and exits with its status; user errors exit 2 with a clear message."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        status = main(sys.argv[1:] if argv is None else argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if not err.filename:  # not about a path: keep the traceback
            raise
        # A path the machine refused (permissions, full disk, a file where a folder should
        # be): one line naming it.
        print(f"error: {err.strerror or err}: {err.filename!r}" + (f" -> {err.filename2!r}" if err.filename2 else ""),
              file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
