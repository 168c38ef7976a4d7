"""Rank aggregation and neuron selection (docs/method.md, sections 4-5): pure tensor math.

Ranks run from 1 (most important) to n; ties are broken by index (the lower index
gets the better rank) so that every result is deterministic.
"""

from __future__ import annotations

import torch


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank the last dimension of ``scores`` in descending order, 1 = largest.

    Works on (n,) or (..., n) tensors; returns float32 ranks of the same shape.
    """
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    n = scores.shape[-1]
    positions = torch.arange(1, n + 1, dtype=torch.float32, device=scores.device)
    out = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    out.scatter_(-1, order, positions.expand(scores.shape).contiguous())
    return out


def aggregate(local_ranks: torch.Tensor | None, global_ranks: torch.Tensor | None, lam: float) -> torch.Tensor:
    """Weighted mean rank ``lam * r_loc + (1 - lam) * r_glob`` (smaller is better).

    ``lam = 1`` uses the local ranks alone, ``lam = 0`` the global ranks alone;
    the unused one may then be ``None``. Shapes broadcast, so a (n,) global ranking
    combines with a (B, n) batch of local rankings.
    """
    check_lam(lam)
    if lam == 1.0:
        if local_ranks is None:
            raise ValueError("lam=1 needs local ranks")
        return local_ranks.float()
    if lam == 0.0:
        if global_ranks is None:
            raise ValueError("lam=0 needs global ranks")
        return global_ranks.float()
    if local_ranks is None or global_ranks is None:
        raise ValueError("0 < lam < 1 needs both local and global ranks")
    return lam * local_ranks.float() + (1.0 - lam) * global_ranks.float()


def select_smallest(aggregated: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest aggregated scores (ties: lower index first),
    returned sorted ascending along the last dimension (int64)."""
    n = aggregated.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    order = torch.argsort(aggregated, dim=-1, stable=True)
    chosen = order[..., :k]
    return torch.sort(chosen, dim=-1).values


def keep_count(density: float, n: int) -> int:
    """Number of neurons kept: ``round(density * n)``, at least 1."""
    check_density(density)
    return max(1, min(n, int(round(density * n))))


def select(local_scores: torch.Tensor | None, global_scores: torch.Tensor | None, lam: float, density: float,
           k: int | None = None) -> torch.Tensor:
    """Rank both views, aggregate with ``lam`` and keep the top ``density`` fraction
    (or exactly ``k`` neurons when given)."""
    r_loc = ranks(local_scores) if (local_scores is not None and lam > 0) else None
    r_glob = ranks(global_scores) if (global_scores is not None and lam < 1) else None
    agg = aggregate(r_loc, r_glob, lam)
    return select_smallest(agg, k if k is not None else keep_count(density, agg.shape[-1]))


def check_density(density: float) -> None:
    if not isinstance(density, (int, float)) or not (0.0 < float(density) <= 1.0):
        raise ValueError(f"density must be in (0, 1] (the fraction of FFN neurons kept), got {density!r}")


def check_lam(lam: float) -> None:
    if not isinstance(lam, (int, float)) or not (0.0 <= float(lam) <= 1.0):
        raise ValueError(f"lam must be in [0, 1] (1 = prompt only as in GRIFFIN, 0 = global prior only), got {lam!r}")


def jaccard(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """Jaccard index of index sets ``a`` and ``b`` (last dim) drawn from ``range(n)``."""
    ma = torch.zeros(*a.shape[:-1], n, dtype=torch.bool, device=a.device).scatter_(-1, a, True)
    mb = torch.zeros(*b.shape[:-1], n, dtype=torch.bool, device=b.device).scatter_(-1, b, True)
    inter = (ma & mb).sum(-1).float()
    union = (ma | mb).sum(-1).float().clamp_min(1)
    return inter / union
