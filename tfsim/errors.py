"""User-facing errors.

`UserInputError` is a `ValueError` raised for bad input a user can fix (config,
paths, data). The CLIs print its message and exit with status 2 instead of a
traceback; everything else is a bug and keeps its traceback.
"""


class UserInputError(ValueError):
    """Bad user input: the message says what was wrong, what was expected and how to fix it."""
