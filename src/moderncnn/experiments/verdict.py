"""The verdict rule: does a measured difference support a paper's claim, at this scale?

A claim compares two arms on one metric (``a > b``, ``a < b`` or ``a == b``). Each arm's metric is a list of
samples: one per seed for accuracy and wall time, one per timing repeat for a measured speed, and a single
exact value for a deterministic count (parameters, GMACs). The rule:

* deterministic quantities: a single value each is enough; "==" holds within ``rel_tol`` of the larger;
* otherwise each arm needs at least two samples (its spread); with fewer the verdict is *inconclusive*;
* the spread of an arm is the range [min, max] of its samples. For ">"/"<": overlapping ranges (the
  difference is inside the spread) are *inconclusive*; separated ranges are *reproduced* in the claimed
  direction, *not reproduced* in the other;
* "==" needs a stated tolerance ``rel_tol`` (of the larger mean): *reproduced* when the ranges overlap and
  the means differ by at most the tolerance, *not reproduced* when the ranges are separated and the means
  differ by more, *inconclusive* otherwise (a spread too wide to tell equal from different).

An experiment's verdict combines its claims: any *not reproduced* makes it *not reproduced*, all
*reproduced* make it *reproduced*, anything else is *inconclusive*.
"""

from __future__ import annotations

from collections.abc import Sequence

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"
RELATIONS = (">", "<", "==")


def compare(a: Sequence[float], b: Sequence[float], relation: str, *, deterministic: bool = False,
            rel_tol: float = 0.0) -> str:
    """The verdict on "a <relation> b" from the samples of the two arms (see the module docstring)."""
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b:
        return INCONCLUSIVE
    if deterministic:
        x, y = sum(a) / len(a), sum(b) / len(b)
        if relation == "==":
            return REPRODUCED if abs(x - y) <= rel_tol * max(abs(x), abs(y)) else NOT_REPRODUCED
        holds = x > y if relation == ">" else x < y
        return REPRODUCED if holds else NOT_REPRODUCED
    if len(a) < 2 or len(b) < 2:
        return INCONCLUSIVE
    overlap = min(a) <= max(b) and min(b) <= max(a)
    if relation == "==":
        x, y = sum(a) / len(a), sum(b) / len(b)
        close = abs(x - y) <= rel_tol * max(abs(x), abs(y))
        if overlap and close:
            return REPRODUCED
        return NOT_REPRODUCED if not overlap and not close else INCONCLUSIVE
    if overlap:
        return INCONCLUSIVE
    holds = min(a) > max(b) if relation == ">" else max(a) < min(b)
    return REPRODUCED if holds else NOT_REPRODUCED


def combine(verdicts: Sequence[str]) -> str:
    """One verdict for an experiment from the verdicts of its claims."""
    if not verdicts:
        return INCONCLUSIVE
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return INCONCLUSIVE
