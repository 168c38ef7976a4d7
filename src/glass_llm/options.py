"""Checks of the decode options' values (refresh, half-lives, counts), shared by ``GlassConfig``
and the method variants of ``methods.get_method``: each returns the value or raises a
``ValueError`` that names the option, what it measures and what 0 means."""

from __future__ import annotations

import math


def _number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def whole(v, name: str, unit: str, zero: str) -> int:
    """A whole number of ``unit`` >= 0, where 0 means ``zero``."""
    if not _number(v) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be a whole number of {unit} >= 1 (or 0: {zero}), got {v!r}")
    return v


def tokens(v, name: str, zero: str) -> float:
    """A finite number of tokens >= 0 (a half-life, a weight in tokens), where 0 means ``zero``."""
    if not _number(v) or not v >= 0 or math.isinf(v):
        raise ValueError(f"{name} must be a finite number of tokens > 0 (or 0: {zero}), got {v!r}")
    return float(v)


def growth(v, name: str = "refresh_growth") -> float:
    """A finite factor >= 1 (1: equal intervals)."""
    if not _number(v) or not v >= 1 or math.isinf(v):
        raise ValueError(f"{name} must be a finite number >= 1 (1: equal intervals), got {v!r}")
    return float(v)
