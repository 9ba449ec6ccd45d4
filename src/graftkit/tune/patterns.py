"""Which parameters a plan pattern names.

A pattern is a glob over parameter or module names (`blocks.0`, `blocks.[0-3]*`,
`*.bias`), a regular expression after `re:`, or a keyword: `head` (the classifier
found by tune.head) and `body` (every parameter outside the head). A module name
names all of its parameters. A pattern that names nothing is an error, so a typo
never silently trains (or freezes) the wrong thing.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Iterable

from ..errors import GraftError


KEYWORDS = ("head", "body", "backbone", "all", "*")   # patterns that name no layer by its name


def matcher(pattern: str, head: str | None):
    """A predicate over parameter names for one pattern."""
    if pattern == "head":
        if head is None:
            raise GraftError("the plan says 'head' but this model has no classifier layer graftkit can find",
                             "name the layer instead")
        return lambda n: n == head or n.startswith(head + ".")
    if pattern in ("body", "backbone"):
        return lambda n: not (head and (n == head or n.startswith(head + ".")))
    if pattern == "all" or pattern == "*":
        return lambda n: True
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as e:
            raise GraftError(f"pattern {pattern!r} is not a valid regular expression: {e}") from None
        return lambda n: rx.search(n) is not None
    return lambda n: fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")


def select(pattern: str, names: Iterable[str], head: str | None, what: str, model_name: str = "the model") -> set[str]:
    """The names a pattern matches; a GraftError naming close candidates when it matches none."""
    names = list(names)
    pred = matcher(pattern, head)
    hit = {n for n in names if pred(n)}
    if not hit:
        layers = sorted({n.rsplit(".", 1)[0] for n in names})
        close = difflib.get_close_matches(pattern, layers, n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}?" if close else
                f"its layers start {', '.join(layers[:4])} ...") + " (see `graft plan show`)"
        raise GraftError(f"plan {what}: {pattern!r} names no layer of {model_name}", hint)
    return hit
