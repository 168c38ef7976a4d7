"""Per-layer density allocation (schedule.py) and the lam rule (dispersion.py): pure math."""

from __future__ import annotations

import itertools

import pytest
import torch

from glass_llm.dispersion import fill_missing, lam_for_tokens, tilt, window_lams, window_score_lams
from glass_llm.ranking import ranks
from glass_llm.schedule import (ScheduleError, allocate, blend, budget, check_schedule, checked_ratio, loss_curve,
                               mean_density)

GRID = torch.tensor([0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875])


def _profile(n_blocks: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n_blocks, 1, generator=g) ** 3 * 5
    return scale * (1 - GRID).square().unsqueeze(0)


@pytest.mark.parametrize("d_ff", [[1536] * 30, [100, 7, 3, 64], [5, 5]])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.3, 0.5, 0.77, 1.0])
def test_allocation_meets_the_budget_exactly(d_ff, density):
    k = allocate(_profile(len(d_ff), seed=len(d_ff)), GRID, d_ff, density)
    assert sum(k) == budget(density, d_ff)
    assert abs(mean_density(k, d_ff) - density) <= len(d_ff) / sum(d_ff)  # one neuron per block at most
    assert all(1 <= a <= n for a, n in zip(k, d_ff))
    check_schedule(k, d_ff)


def test_sensitive_blocks_get_more_neurons():
    profile = torch.stack([(1 - GRID).square() * s for s in (10.0, 1.0, 0.1)])
    k = allocate(profile, GRID, [1000, 1000, 1000], 0.5)
    assert k[0] > k[1] > k[2] and sum(k) == 1500


@pytest.mark.parametrize("density", [0.3, 0.5, 0.7, 0.9])
def test_no_block_is_cut_beyond_the_bound(density):
    profile = torch.stack([(1 - GRID).square() * s for s in (100.0, 10.0, 1.0, 0.01, 0.001)])
    d_ff = [1000] * 5
    free = allocate(profile, GRID, d_ff, density, max_cut=None)
    bounded = allocate(profile, GRID, d_ff, density, max_cut=1.5)
    floor = max(0.125, 1 - 1.5 * (1 - density))
    assert sum(bounded) == sum(free) == budget(density, d_ff)
    assert all(k >= int(floor * 1000) for k in bounded)
    if density >= 0.5:  # the unbounded greedy cuts the insensitive blocks deeper than the bound allows
        assert min(free) < int(floor * 1000)
    with pytest.raises(ScheduleError, match="max_cut must be at least 1"):
        allocate(profile, GRID, d_ff, density, max_cut=0.5)


def test_equal_profiles_give_uniform_allocation():
    profile = torch.stack([(1 - GRID).square()] * 4)
    assert allocate(profile, GRID, [512] * 4, 0.5, step=1 / 64) == [256] * 4


def test_greedy_matches_brute_force_on_a_small_case():
    """Convex curves: greedy steps of one neuron find the least total loss."""
    profile = torch.stack([(1 - GRID) ** 2 * s for s in (3.0, 1.0, 0.5)])
    d_ff = [8, 8, 8]
    curves = [loss_curve(row.tolist(), GRID.tolist(), n) for row, n in zip(profile, d_ff)]
    k = allocate(profile, GRID, d_ff, 0.5, step=1 / 8, max_cut=None)
    best = min((sum(c[a] for c, a in zip(curves, ks)), ks)
               for ks in itertools.product(range(1, 9), repeat=3) if sum(ks) == 12)
    assert sum(c[a] for c, a in zip(curves, k)) == pytest.approx(best[0])


def test_checked_ratio_interpolates_in_log_ratio_and_clamps():
    dens, ratios = [0.3, 0.5, 0.7], [0.5, 2.0, 1.0]
    for d, r in zip(dens, ratios):
        assert checked_ratio(d, dens, ratios) == pytest.approx(r)
    assert checked_ratio(0.4, dens, ratios) == pytest.approx(1.0)  # halfway between 0.5 and 2 in log
    assert checked_ratio(0.1, dens, ratios) == pytest.approx(0.5) and checked_ratio(0.95, dens, ratios) == 1.0
    with pytest.raises(ScheduleError, match="one ratio per density"):
        checked_ratio(0.5, [0.3, 0.5], [1.0])


def test_loss_curve_is_non_increasing_and_zero_when_dense():
    c = loss_curve([0.5, 0.7, 0.2, 0.3, 0.1, 0.05, 0.0], GRID.tolist(), 64)
    assert c[-1] == 0 and all(a >= b for a, b in zip(c, c[1:]))


def test_loss_curve_interpolates_the_profile_point_by_point():
    """Each point k/d_ff is the linear interpolation between the grid densities around it (loss 0 at
    density 1), the first segment extended below the grid, then raised to the loss of any larger k;
    exactly, as the one-point-at-a-time definition computes it in double precision."""
    import random

    def by_point(losses, grid, n):
        xs, ys = list(grid) + [1.0], [max(0.0, v) for v in losses] + [0.0]
        out = []
        for k in range(n + 1):
            x = k / n
            if x <= xs[0]:
                out.append(ys[0] + (ys[1] - ys[0]) / (xs[1] - xs[0]) * (x - xs[0]))
                continue
            j = next(j for j in range(1, len(xs)) if x <= xs[j])
            out.append(ys[j - 1] + (x - xs[j - 1]) / (xs[j] - xs[j - 1]) * (ys[j] - ys[j - 1]))
        for k in range(n - 1, -1, -1):
            out[k] = max(out[k], out[k + 1])
        return out

    rng = random.Random(0)
    for _ in range(100):
        n = rng.choice([1, 3, 64, 1536])
        grid = sorted({round(rng.uniform(0.01, 0.99), rng.choice([2, 6])) for _ in range(rng.randint(1, 8))})
        losses = [rng.uniform(-0.1, 2.0) for _ in grid]
        assert loss_curve(losses, grid, n) == by_point(losses, grid, n)


def test_bad_profiles_and_schedules_are_named():
    with pytest.raises(ScheduleError, match="measured on another model"):
        allocate(_profile(18), GRID, [1536] * 30, 0.5)
    with pytest.raises(ScheduleError, match="expected"):
        allocate(_profile(3)[:, :4], GRID, [10] * 3, 0.5)
    with pytest.raises(ScheduleError, match="increase strictly"):
        allocate(_profile(3), GRID.flip(0), [10] * 3, 0.5)
    with pytest.raises(ScheduleError, match="density"):
        allocate(_profile(3), GRID, [10] * 3, 1.5)
    with pytest.raises(ScheduleError, match="3 FFN blocks"):
        check_schedule([4, 4], [10, 10, 10])
    with pytest.raises(ScheduleError, match="out of range"):
        check_schedule([0, 4, 11], [10, 10, 10])


def test_window_lam_recovers_the_mallows_weight():
    """Local view: truth + noise of variance 1/w; global: truth + noise of variance s2.
    The least-squares lam approaches s2 / (s2 + 1/w) (the Mallows MAP weight)."""
    g = torch.Generator().manual_seed(0)
    d, T, B = 400, 200, 8
    truth = torch.linspace(3, 0, d)
    # per-token statistic whose window sums rank like truth + N(0, 1/w)
    u2 = truth + torch.randn(B, T, d, generator=g)
    glob = truth + 0.25 * torch.randn(d, generator=g)
    lam = window_lams(u2, torch.full((B,), T), glob, windows=(1, 4, 16), horizon=64, stride=16)
    assert lam[0] < lam[1] < lam[2]
    assert 0 <= float(lam.min()) and float(lam.max()) <= 1


def test_window_lam_matches_brute_force_least_squares():
    g = torch.Generator().manual_seed(1)
    u2 = torch.rand(2, 12, 20, generator=g)
    glob = torch.rand(20, generator=g)
    lam = window_lams(u2, torch.tensor([12, 12]), glob, windows=(2,), horizon=4, stride=3)
    grid = torch.linspace(0, 1, 1001)
    rg = ranks(glob).double()
    loss = torch.zeros_like(grid, dtype=torch.float64)
    for s in range(0, 12 - 2 - 4 + 1, 3):
        rl = ranks(u2[:, s:s + 2].sum(1)).double()
        ro = ranks(u2[:, s + 2:s + 6].sum(1)).double()
        for j, a in enumerate(grid.tolist()):
            loss[j] += (a * rl + (1 - a) * rg - ro).square().sum()
    assert float(lam[0]) == pytest.approx(float(grid[loss.argmin()]), abs=2e-3)


def test_lam_interpolates_in_log_tokens_and_clamps():
    table, windows = torch.tensor([0.1, 0.3, 0.5]), torch.tensor([1.0, 4.0, 16.0])
    out = lam_for_tokens(table, windows, torch.tensor([1, 2, 4, 8, 16, 1000]))
    assert torch.allclose(out, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.5]))


def test_tilt_and_fill():
    lam = torch.tensor([0.2, 0.6])
    assert torch.equal(tilt(lam, 0.5), lam) and torch.equal(tilt(lam, None), lam)
    assert torch.equal(tilt(lam, 1.0), torch.ones(2)) and torch.equal(tilt(lam, 0.0), torch.zeros(2))
    assert bool((tilt(lam, 0.8) > lam).all())
    filled = fill_missing(torch.tensor([[float("nan"), 0.2, float("nan")]]))
    assert filled.tolist() == [[pytest.approx(0.2)] * 3]
    with pytest.raises(ValueError, match="too short"):
        fill_missing(torch.tensor([[float("nan")] * 3]))


def test_score_lam_trusts_the_view_that_predicts_the_following_tokens():
    g = torch.Generator().manual_seed(2)
    B, T, d = 4, 96, 200
    truth = torch.rand(d, generator=g) ** 4
    steady = (truth / truth.sum()).expand(B, T, d).clone()  # every token like the prior
    noisy_prior = torch.rand(d, generator=g)
    noisy_prior /= noisy_prior.sum()
    assert float(window_score_lams(steady, torch.full((B,), T), noisy_prior, windows=(4,), horizon=32)[0]) == 1.0
    shifting = torch.rand(B, T, d, generator=g)  # tokens unrelated to each other
    shifting /= shifting.sum(-1, keepdim=True)
    lam = window_score_lams(shifting, torch.full((B,), T), noisy_prior, windows=(4,), horizon=32)
    assert 0.0 <= float(lam[0]) <= 1.0


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.37, 0.5, 0.93, 1.0])
def test_blend_keeps_the_budget_and_stays_between_the_two_schedules(weight):
    d_ff = [1536] * 30
    sched = allocate(_profile(30), GRID, d_ff, 0.5)
    even = [768] * 30
    assert sum(sched) == sum(even)
    k = blend(sched, even, weight)
    assert sum(k) == sum(even)
    assert all(min(a, b) <= c <= max(a, b) for a, b, c in zip(sched, even, k))
    assert all(abs(c - (weight * a + (1 - weight) * b)) < 1 for a, b, c in zip(sched, even, k))
    assert blend(sched, even, 1.0) == sched and blend(sched, even, 0.0) == even


def test_blend_of_unequal_totals_rounds_the_blended_total():
    assert blend([10, 2, 6], [6, 6, 7], 0.3) == [7, 5, 7]  # 7.2, 4.8, 6.7: total 18.7 -> 19
    with pytest.raises(ScheduleError, match="blend weight"):
        blend([1, 2], [2, 1], 1.5)
    with pytest.raises(ScheduleError, match="2 and 3 blocks"):
        blend([1, 2], [2, 1, 1], 0.5)
