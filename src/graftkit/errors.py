"""The one exception type for user mistakes and bad input.

The CLI prints a GraftError as a single line and exits with status 2; anything
else escaping is a bug in graftkit and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import os


class GraftError(Exception):
    """Bad input or a user mistake: the message says what, where, and what to do."""

    def __init__(self, message: str, hint: str | None = None):
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


def short(value, limit: int = 80) -> str:
    """A value read from a file, shown in an error message: clipped, and safe on deep nesting (reprlib)."""
    import reprlib
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def some(names, limit: int = 5) -> str:
    """'a, b, c, d, e, ...': the first few of a list, for naming offenders in one line."""
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str = "file"):
    """Turn the OS errors of opening a user's `path` into one-line GraftErrors."""
    try:
        yield
    except FileNotFoundError:
        raise GraftError(f"{path}: no such file", "check the path") from None
    except IsADirectoryError:
        raise GraftError(f"{path}: is a folder, not a {what}", f"name the {what} inside it") from None
    except OSError as e:
        raise GraftError(f"{path}: cannot read: {e.strerror}") from None
