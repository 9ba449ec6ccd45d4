"""Structural alignment of two unit sequences, like sequence alignment of two genes.

A zip would shift every layer after the first inserted or removed one; a global
alignment (Needleman-Wunsch) with gaps scored 0, identical units (same family,
same shapes) scored high and same-family units of other shapes scored low pairs
the layers that really correspond and leaves the inserted/removed ones alone.

Layers stored out of order (a residual shortcut saved before the block body)
cannot be paired by one order-preserving alignment, so after the first round the
units still unpaired are aligned again, accepting only identical units that sit
near where the anchors of the first round expect them (`WINDOW` units).
Only at the end are same-family units of different shapes paired, so that a
policy can adapt them or the report can name the shape clash.
"""
from __future__ import annotations

from .units import Unit

EXACT, SIMILAR = 10, 1
WINDOW = 6


def _score(a: Unit, b: Unit) -> int:
    return _score_keys((a.match_family, a.family, a.key()), (b.match_family, b.family, b.key()))


def _score_keys(a: tuple, b: tuple) -> int:
    """EXACT for the same layer; SIMILAR for the same kind of layer with other shapes (a 1x1
    convolution counts as a dense layer only when the shapes agree exactly)."""
    if a[0] != b[0]:
        return 0
    if a[2] == b[2]:
        return EXACT
    return SIMILAR if a[1] == b[1] else 0


def needleman_wunsch(src: list[Unit], tgt: list[Unit]) -> list[tuple[int, int]]:
    """Index pairs (i, j) of the best order-preserving alignment (gaps free, mismatches of family forbidden)."""
    n, m = len(src), len(tgt)
    skeys = [(u.match_family, u.family, u.key()) for u in src]
    tkeys = [(u.match_family, u.family, u.key()) for u in tgt]

    def score(i: int, j: int) -> int:
        return _score_keys(skeys[i], tkeys[j])

    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = best[i], best[i + 1]
        for j in range(m - 1, -1, -1):
            s = score(i, j)
            v = below[j] if below[j] >= row[j + 1] else row[j + 1]
            if s and below[j + 1] + s > v:
                v = below[j + 1] + s
            row[j] = v
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        s = score(i, j)
        if s and best[i][j] == best[i + 1][j + 1] + s:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            i += 1
        else:
            j += 1
    return pairs


def align(src: list[Unit], tgt: list[Unit]) -> list[tuple[int, int, bool]]:
    """Pairs (source index, target index, identical?) of corresponding units."""
    result: list[tuple[int, int, bool]] = []
    exact = [(i, j) for i, j in needleman_wunsch(src, tgt) if _score(src[i], tgt[j]) == EXACT]
    anchors = sorted(exact)
    result += [(i, j, True) for i, j in exact]
    # Later rounds: identical units stored out of order, near where the anchors predict them.
    while True:
        used_s = {i for i, _, _ in result}
        used_t = {j for _, j, _ in result}
        rest_s = [i for i in range(len(src)) if i not in used_s]
        rest_t = [j for j in range(len(tgt)) if j not in used_t]
        found = []
        for a, b in needleman_wunsch([src[i] for i in rest_s], [tgt[j] for j in rest_t]):
            i, j = rest_s[a], rest_t[b]
            if _score(src[i], tgt[j]) == EXACT and abs(_expected(i, anchors) - j) <= WINDOW:
                found.append((i, j, True))
        if not found:
            break
        result += found
    # Finally units of the same family but other shapes, in order: for adaptation or the report.
    used_s = {i for i, _, _ in result}
    used_t = {j for _, j, _ in result}
    rest_s = [i for i in range(len(src)) if i not in used_s]
    rest_t = [j for j in range(len(tgt)) if j not in used_t]
    for a, b in needleman_wunsch([src[i] for i in rest_s], [tgt[j] for j in rest_t]):
        i, j = rest_s[a], rest_t[b]
        if _between_same_anchors(i, j, anchors):
            result.append((i, j, False))
    return sorted(result, key=lambda p: p[1])


def _expected(i: int, anchors: list[tuple[int, int]]) -> float:
    """Target index that source index i should have, judged from the nearest anchor pair."""
    if not anchors:
        return i
    ai, aj = min(anchors, key=lambda p: abs(p[0] - i))
    return aj + (i - ai)


def _between_same_anchors(i: int, j: int, anchors: list[tuple[int, int]]) -> bool:
    """A shape-clash pair must not cross an identical pair (that would contradict the alignment)."""
    return all((ai < i) == (aj < j) for ai, aj in anchors)
