"""The one direction every speed ratio of the benchmarks reads in: "x faster than <reference>", above 1 =
faster, below 1 = slower (never a slowdown factor beside a speedup)."""

from __future__ import annotations


def x_faster(reference: float, this: float) -> float:
    """How many times faster than ``reference`` a run taking ``this`` is (both times in the same unit)."""
    return reference / this


__all__ = ["x_faster"]
