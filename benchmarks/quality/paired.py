"""Paired per-seed comparisons: every configuration of a study runs on the same seeds (data, held-out set and
noise follow the seed), so a difference is measured seed by seed and summarised with its sign count and a
two-sided 95% Student-t interval of the mean."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal 1.96 is within 2%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"t975: argument 'df' expected >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Paired:
    """Relative difference (a - b) / b per seed, in percent; negative = a has the lower error."""

    diffs: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def half_width(self) -> float:
        """Half-width of the 95% t interval of the mean (inf with one seed)."""
        if self.n < 2:
            return math.inf
        return t975(self.n - 1) * statistics.stdev(self.diffs) / math.sqrt(self.n)

    @property
    def lower(self) -> int:
        """Seeds where a's error is lower than b's."""
        return sum(d < 0 for d in self.diffs)

    @property
    def verdict(self) -> str:
        """'lower' / 'higher' when the interval excludes 0, else 'not resolved'."""
        if self.mean + self.half_width < 0:
            return "lower"
        if self.mean - self.half_width > 0:
            return "higher"
        return "not resolved"

    def cell(self) -> str:
        return f"{self.mean:+.1f}% ± {self.half_width:.1f} ({self.lower}/{self.n} lower)"


def paired(runs: Sequence[dict], a: str, b: str, key: str = "denoise_mse") -> Paired | None:
    """Paired relative difference of ``key`` between labels a and b over the seeds both have."""
    va = {r["seed"]: r[key] for r in runs if r["label"] == a}
    vb = {r["seed"]: r[key] for r in runs if r["label"] == b}
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        return None
    return Paired(tuple(100.0 * (va[s] - vb[s]) / vb[s] for s in seeds))


def paired_ratio(runs: Sequence[dict], a: str, b: str, value) -> Paired | None:
    """Paired ratio value(run_a, run_b) per seed, as (ratio - 1) in percent; value returns None to skip a seed."""
    ra = {r["seed"]: r for r in runs if r["label"] == a}
    rb = {r["seed"]: r for r in runs if r["label"] == b}
    diffs = [v for s in sorted(set(ra) & set(rb)) if (v := value(ra[s], rb[s])) is not None]
    return Paired(tuple(100.0 * (d - 1.0) for d in diffs)) if diffs else None


__all__ = ["Paired", "paired", "paired_ratio", "t975"]
