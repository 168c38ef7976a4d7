"""Per-layer density under one budget: pure allocation math, no model plumbing.

The user asks for one density ``d``: the mean fraction of FFN neurons kept, weighted by
block size, so the budget is ``K = round(d * sum(d_ff))`` neurons in all (the decode
cost of the FFNs is proportional to it). ``allocate`` spreads ``K`` over the blocks from
a sensitivity profile: ``profile[i, g]`` is the loss (for instance the KL to the dense
model) when only block ``i`` keeps the fraction ``grid[g]`` of its neurons. The loss of
block ``i`` at ``k`` neurons is read from its curve by linear interpolation in the
density (0 at density 1; below the grid, the first segment's slope continues), made
non-increasing in ``k``, and the losses of the blocks are taken to add up.

Greedy, as TEAL allocates its sparsities: start from every block dense and repeatedly
take ``step`` of its neurons from the block whose loss grows least per neuron taken,
until the budget is met; the last step gives back what it took beyond the budget, so
``sum(k) == K`` exactly and every block keeps at least one neuron. No block goes below
the lowest measured density (or the requested one, if lower): the profile says nothing
reliable beneath it. Nor does any block lose more than ``MAX_CUT`` times the mean fraction
removed: the profile is measured one block at a time, and deep cuts in a few blocks
compound where the sum of single-block losses does not see it (docs/selection.md).
"""

from __future__ import annotations

import heapq
import math
from typing import Sequence

import torch

DEFAULT_STEP = 1 / 32  # neurons moved per greedy step, as a fraction of the block
MAX_CUT = 1.5  # no block loses more than 1.5x the mean fraction removed (chosen on the calibration split)


class ScheduleError(ValueError):
    """A sensitivity profile or schedule does not fit the model or the request."""


def check_profile(profile: torch.Tensor, grid: torch.Tensor, n_blocks: int) -> None:
    """``profile`` (n_blocks, G) of finite losses at the densities ``grid`` (G,), increasing in (0, 1)."""
    if grid.dim() != 1 or grid.numel() < 1:
        raise ScheduleError(f"the density grid must be a non-empty vector, got shape {tuple(grid.shape)}")
    if not bool(((grid > 0) & (grid < 1)).all()) or not bool((grid[1:] > grid[:-1]).all()):
        raise ScheduleError(f"the density grid must increase strictly inside (0, 1), got {grid.tolist()}")
    if profile.dim() != 2 or profile.shape[1] != grid.numel():
        raise ScheduleError(f"the sensitivity profile has shape {tuple(profile.shape)}; "
                            f"expected (blocks, {grid.numel()}) for a grid of {grid.numel()} densities")
    if profile.shape[0] != n_blocks:
        raise ScheduleError(f"the sensitivity profile covers {profile.shape[0]} FFN blocks but the model has "
                            f"{n_blocks}: it was measured on another model; recompute it for this one")
    if not bool(torch.isfinite(profile).all()):
        raise ScheduleError("the sensitivity profile holds non-finite values; recompute it")


def loss_curve(losses: Sequence[float], grid: Sequence[float], d_ff: int) -> list[float]:
    """Loss of one block at ``k = 0 .. d_ff`` neurons, non-increasing in ``k``: linear between the
    grid's densities (and 0 at density 1), extended below the first with the first segment's slope.
    Computed on whole vectors in float64, with the same operations per point as one at a time."""
    xs = torch.tensor([float(g) for g in grid] + [1.0], dtype=torch.float64)
    ys = torch.tensor([max(0.0, float(v)) for v in losses] + [0.0], dtype=torch.float64)
    x = torch.arange(d_ff + 1, dtype=torch.float64) / d_ff
    j = torch.searchsorted(xs, x).clamp(1, len(xs) - 1)  # the first j with x <= xs[j]
    t = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
    inside = ys[j - 1] + t * (ys[j] - ys[j - 1])
    slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
    below = ys[0] + slope * (x - xs[0])
    y = torch.where(x <= xs[0], below, inside)
    return y.flip(0).cummax(0).values.flip(0).tolist()  # fewer neurons never lose less


def budget(density: float, d_ff: Sequence[int]) -> int:
    """Neurons kept in all: ``round(density * sum(d_ff))``, at least one per block."""
    if not isinstance(density, (int, float)) or not 0.0 < float(density) <= 1.0:
        raise ScheduleError(f"density must be in (0, 1] (the mean fraction of FFN neurons kept), got {density!r}")
    return max(len(d_ff), min(sum(d_ff), int(round(float(density) * sum(d_ff)))))


def allocate(profile: torch.Tensor, grid: torch.Tensor, d_ff: Sequence[int], density: float,
             step: float = DEFAULT_STEP, max_cut: float | None = MAX_CUT) -> list[int]:
    """Neurons kept per block: ``sum == budget(density, d_ff)``, each in ``[1, d_ff[i]]``.

    ``max_cut``: no block loses more than this multiple of the mean fraction removed
    (``1 - density``); None lifts the bound.
    """
    d_ff = [int(n) for n in d_ff]
    check_profile(profile, grid, len(d_ff))
    if not 0.0 < step <= 1.0:
        raise ScheduleError(f"step must be a fraction in (0, 1], got {step!r}")
    target = budget(density, d_ff)
    curves = [loss_curve(row.tolist(), grid.tolist(), n) for row, n in zip(profile, d_ff)]
    steps = [max(1, int(round(step * n))) for n in d_ff]
    least = min(float(grid[0]), float(density))
    if max_cut is not None:
        if max_cut < 1:
            raise ScheduleError(f"max_cut must be at least 1 (the mean cut), got {max_cut!r}")
        least = max(least, 1.0 - max_cut * (1.0 - float(density)))
    floor = [max(1, math.floor(least * n)) for n in d_ff]
    if sum(floor) > target:  # tiny blocks: one neuron each is the only safe floor
        floor = [1] * len(d_ff)
    k = list(d_ff)
    total = sum(k)

    def entry(i: int):
        take = min(steps[i], k[i] - floor[i])
        if take <= 0:
            return None
        cost = (curves[i][k[i] - take] - curves[i][k[i]]) / take
        return (cost, i, take)

    heap = [e for e in (entry(i) for i in range(len(k))) if e is not None]
    heapq.heapify(heap)
    while total > target:
        if not heap:  # cannot happen: target >= one neuron per block
            raise ScheduleError("the budget is below one neuron per block")
        _, i, take = heapq.heappop(heap)
        k[i] -= take
        total -= take
        if total < target:  # give back the overshoot of the last step
            k[i] += target - total
            total = target
            break
        e = entry(i)
        if e is not None:
            heapq.heappush(heap, e)
    return k


def checked_ratio(density: float, densities: Sequence[float], ratios: Sequence[float]) -> float:
    """The schedule check's KL ratio (allocated schedule / uniform density) at ``density``:
    the ratios measured at ``densities`` (increasing), interpolated linearly in the log ratio,
    constant beyond the ends. Below 1: the schedule measured better than the uniform density."""
    xs, ys = [float(d) for d in densities], [math.log(max(float(r), 1e-12)) for r in ratios]
    if not xs or len(xs) != len(ys):
        raise ScheduleError(f"the schedule check needs one ratio per density, got {len(ys)} for {len(xs)}")
    d = float(density)
    if d <= xs[0]:
        return math.exp(ys[0])
    for j in range(1, len(xs)):
        if d <= xs[j]:
            t = (d - xs[j - 1]) / (xs[j] - xs[j - 1])
            return math.exp(ys[j - 1] + t * (ys[j] - ys[j - 1]))
    return math.exp(ys[-1])


def check_schedule(k: Sequence[int], d_ff: Sequence[int]) -> None:
    """An explicit per-block neuron count must name every block and stay in ``[1, d_ff]``."""
    if len(k) != len(d_ff):
        raise ScheduleError(f"the schedule has {len(k)} entries but the model has {len(d_ff)} FFN blocks")
    bad = [i for i, (a, n) in enumerate(zip(k, d_ff)) if not 1 <= int(a) <= n]
    if bad:
        raise ScheduleError(f"schedule entries out of range [1, d_ff] for block(s) {bad}")


def mean_density(k: Sequence[int], d_ff: Sequence[int]) -> float:
    """The size-weighted mean density of a schedule."""
    return sum(k) / sum(d_ff)


def blend(k_from: Sequence[int], k_to: Sequence[int], weight: float) -> list[int]:
    """Per-block neuron counts ``weight`` of the way from ``k_to`` back to ``k_from``:
    ``weight * k_from + (1 - weight) * k_to``, rounded so that the total is the blend of the
    two totals rounded (so two schedules of one budget give that budget exactly; largest
    remainders get the spare neurons) and every block stays between its two counts."""
    if len(k_from) != len(k_to):
        raise ScheduleError(f"cannot blend schedules of {len(k_from)} and {len(k_to)} blocks")
    if not 0.0 <= float(weight) <= 1.0:
        raise ScheduleError(f"the blend weight must be in [0, 1], got {weight!r}")
    w = float(weight)
    exact = [w * a + (1.0 - w) * b for a, b in zip(k_from, k_to)]
    k = [math.floor(x) for x in exact]
    spare = int(round(w * sum(k_from) + (1.0 - w) * sum(k_to))) - sum(k)
    for i in sorted(range(len(k)), key=lambda i: k[i] - exact[i])[:max(0, spare)]:
        k[i] += 1
    return k
