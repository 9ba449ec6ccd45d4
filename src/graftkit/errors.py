"""The one exception type for user mistakes and bad input.

The CLI prints a GraftError as a single line and exits with status 2; anything
else escaping is a bug in graftkit and keeps its traceback.
"""


class GraftError(Exception):
    """Bad input or a user mistake: the message says what, where, and what to do."""

    def __init__(self, message: str, hint: str | None = None):
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)
