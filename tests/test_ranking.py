"""The pure math: statistics, ranks, aggregation (against brute-force MAP), selection."""

import itertools
import math

import pytest
import torch

from glass_llm.ranking import aggregate, jaccard, keep_count, ranks, select, select_smallest
from glass_llm.stats import accumulate_activation, activation_from_sums, finalize


def test_ranks_descending_with_index_tiebreak():
    s = torch.tensor([0.5, 2.0, 0.5, 3.0])
    assert ranks(s).tolist() == [3.0, 2.0, 4.0, 1.0]
    batch = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
    assert ranks(batch).tolist() == [[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]]


def test_select_smallest_is_sorted_and_deterministic():
    agg = torch.tensor([2.0, 1.0, 2.0, 0.5, 2.0])
    assert select_smallest(agg, 3).tolist() == [0, 1, 3]  # tie at 2.0 -> lowest index
    with pytest.raises(ValueError):
        select_smallest(agg, 0)


def _spearman_cost(perm_ranks, r, theta):
    return theta * sum((a - b) ** 2 for a, b in zip(perm_ranks, r))


@pytest.mark.parametrize("seed", range(12))
def test_aggregation_is_the_mallows_map_ranking(seed):
    g = torch.Generator().manual_seed(seed)
    n = 5
    r_loc = torch.randperm(n, generator=g).float() + 1
    r_glob = torch.randperm(n, generator=g).float() + 1
    theta_l, theta_g = [float(x) for x in torch.rand(2, generator=g) * 3 + 0.1]
    lam = theta_l / (theta_l + theta_g)
    costs = {}
    for perm in itertools.permutations(range(1, n + 1)):
        costs[perm] = _spearman_cost(perm, r_loc.tolist(), theta_l) + _spearman_cost(perm, r_glob.tolist(), theta_g)
    best = min(costs.values())
    ours = ranks(-aggregate(r_loc, r_glob, lam))  # smallest aggregated score -> rank 1
    assert math.isclose(costs[tuple(int(x) for x in ours.tolist())], best, rel_tol=1e-9, abs_tol=1e-9)
    # the top-k set of the MAP ranking is what selection keeps
    k = 2
    map_perm = min(costs, key=costs.get)
    map_top = sorted(i for i, r in enumerate(map_perm) if r <= k)
    if sorted(costs.values())[1] > best + 1e-9:  # unique MAP: the sets must agree exactly
        assert select(-r_loc, -r_glob, lam, k / n).tolist() == map_top


def test_lam_extremes_use_one_view():
    loc = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    glob = torch.tensor([0.9, 0.1, 0.8, 0.2])
    assert select(loc, glob, 1.0, 0.5).tolist() == [[1, 3]]
    assert select(loc, glob, 0.0, 0.5).tolist() == [0, 2]
    assert select(torch.rand(3, 4), glob, 0.0, 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan")])
def test_bad_density(bad):
    with pytest.raises(ValueError, match="density"):
        keep_count(bad, 10)


@pytest.mark.parametrize("bad", [-0.01, 1.5])
def test_bad_lam(bad):
    with pytest.raises(ValueError, match="lam"):
        aggregate(torch.ones(3), torch.ones(3), bad)


def test_keep_count_rounds():
    assert keep_count(0.5, 1536) == 768
    assert keep_count(1e-6, 10) == 1
    assert keep_count(1.0, 7) == 7


def test_activation_statistic_normalises_tokens_and_skips_padding():
    z = torch.tensor([[[3.0, 4.0], [100.0, 0.0], [7.0, 7.0]]])
    mask = torch.tensor([[1, 1, 0]])
    sums = accumulate_activation(z, mask)
    # u1 = (0.6, 0.8), u2 = (1, 0); padding token ignored
    assert torch.allclose(sums, torch.tensor([[0.36 + 1.0, 0.64]]))
    a = activation_from_sums(sums)
    assert torch.allclose(a, torch.tensor([[math.sqrt(1.36), 0.8]]))
    imp = finalize(sums, "impact", torch.tensor([2.0, 0.5]))
    assert torch.allclose(imp, a * torch.tensor([2.0, 0.5]))
    with pytest.raises(ValueError):
        finalize(sums, "nope")


def test_jaccard():
    a = torch.tensor([[0, 1, 2]])
    b = torch.tensor([[1, 2, 3]])
    assert jaccard(a, b, 5).item() == pytest.approx(0.5)
    assert jaccard(a, a, 5).item() == 1.0
