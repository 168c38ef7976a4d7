"""Interval estimates for the published numbers: pure functions, no model code.

* :func:`mean_ci`: the mean of ``n`` independent values with its Student-t interval,
  ``mean ± t(1 - (1 - level) / 2, n - 1) * sd / sqrt(n)``, where ``t`` comes from the
  t distribution's quantile function (scipy) for any ``n`` (no table, no normal
  approximation). With fewer than two values the interval is undefined (``nan``).
* :func:`paired_diff`: two methods measured on the same prompts. The per-prompt
  differences ``a_i - b_i`` remove the variation between prompts that both share; the
  result is the mean difference with its t interval. A difference is only claimed when
  the interval excludes zero (:attr:`Interval.excludes_zero`). For perplexities, pass the
  per-prompt mean NLLs: ``exp`` of the difference and of its bounds is the ratio of the
  two perplexities with its interval (:meth:`Interval.exp`).
* :func:`paired_ratio`: the ratio of two means measured on the same prompts (``mean(a) /
  mean(b)``, e.g. "KL at most 0.8x glass-a") with Fieller's interval: the set of ratios
  ``r`` for which the mean of the per-prompt ``a_i - r * b_i`` is within its t interval of
  zero. Unlike a difference interval divided by ``mean(b)``, it counts the uncertainty of
  the denominator, so it is asymmetric and never crosses zero for positive values with a
  clearly positive denominator; it is unbounded (``inf``) when ``mean(b)`` itself is not
  clearly away from zero.
* :func:`spread`: min / median / max of repeated timings (speed figures are quoted with
  their spread across repeats, not as a single number).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval ``[low, high]`` from ``n`` values."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    @property
    def half(self) -> float:
        """Half-width of the interval (``nan`` when it is undefined)."""
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero (a difference to claim)."""
        return self.low > 0 or self.high < 0

    def exp(self) -> Interval:
        """The interval mapped through ``exp`` (e.g. NLL differences to perplexity ratios)."""
        return Interval(math.exp(self.mean), math.exp(self.low), math.exp(self.high), self.n, self.level)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "level": self.level}


def _values(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what}: no values given")
    if any(not math.isfinite(v) for v in out):
        raise ValueError(f"{what}: values must be finite numbers, got {out}")
    return out


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of ``values`` with its Student-t confidence interval at ``level``."""
    xs = _values(values, "mean_ci")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    sd = statistics.stdev(xs)
    half = t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)


def paired_diff(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of the per-item differences ``a[i] - b[i]`` with its t interval; ``a`` and ``b``
    must hold one value per item, in the same item order."""
    xs, ys = _values(a, "paired_diff"), _values(b, "paired_diff")
    if len(xs) != len(ys):
        raise ValueError(f"paired_diff needs one value per item on both sides, got {len(xs)} and {len(ys)}")
    return mean_ci([x - y for x, y in zip(xs, ys)], level)


def paired_ratio(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """``mean(a) / mean(b)`` over items measured on both sides, with Fieller's interval at
    ``level`` (``[-inf, inf]`` where the denominator's mean is not clearly away from zero)."""
    xs, ys = _values(a, "paired_ratio"), _values(b, "paired_ratio")
    if len(xs) != len(ys):
        raise ValueError(f"paired_ratio needs one value per item on both sides, got {len(xs)} and {len(ys)}")
    n = len(xs)
    ma, mb = math.fsum(xs) / n, math.fsum(ys) / n
    if mb == 0:
        raise ValueError("paired_ratio: the mean of the denominator is zero")
    ratio = ma / mb
    if n < 2:
        return Interval(ratio, math.nan, math.nan, n, level)
    saa = math.fsum((x - ma) ** 2 for x in xs) / (n - 1)
    sbb = math.fsum((y - mb) ** 2 for y in ys) / (n - 1)
    sab = math.fsum((x - ma) * (y - mb) for x, y in zip(xs, ys)) / (n - 1)
    q = t_quantile(1 - (1 - level) / 2, n - 1) ** 2 / n
    # (ma - r mb)^2 <= q (saa - 2 r sab + r^2 sbb), a quadratic A r^2 - 2 B r + C <= 0
    A, B, C = mb * mb - q * sbb, ma * mb - q * sab, ma * ma - q * saa
    if A <= 0:
        return Interval(ratio, -math.inf, math.inf, n, level)
    root = math.sqrt(max(0.0, B * B - A * C))  # >= 0 but for rounding: the ratio itself is always inside
    return Interval(ratio, (B - root) / A, (B + root) / A, n, level)


@dataclass(frozen=True)
class Spread:
    """Min, median and max of repeated measurements."""

    min: float
    median: float
    max: float
    n: int

    def format(self, fmt: str = "{:.2f}") -> str:
        """``median (min-max)``, or the value alone for a single measurement."""
        if self.n == 1:
            return fmt.format(self.median)
        return f"{fmt.format(self.median)} ({fmt.format(self.min)}-{fmt.format(self.max)})"


def spread(values: Sequence[float]) -> Spread:
    xs = _values(values, "spread")
    return Spread(min(xs), statistics.median(xs), max(xs), len(xs))
