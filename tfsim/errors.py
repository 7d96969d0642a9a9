"""User-facing errors.

`UserInputError` is a `ValueError` raised for bad input a user can fix (config,
paths, data). The CLIs print its message and exit with status 2 instead of a
traceback; everything else is a bug and keeps its traceback.
"""

import contextlib
import re


class UserInputError(ValueError):
    """Bad user input: the message says what was wrong, what was expected and how to fix it."""


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
