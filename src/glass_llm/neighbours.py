"""A global view that depends on the prompt: the statistic of the model's own greedy replies
nearest to it (docs/method.md, "Nearest greedy replies"). Pure tensor math, no model plumbing.

The prior's calibration keeps, besides the summed statistic of every greedy reply the model
wrote (the ``greedy`` global source), each reply's own sums: a bank of R rows, (R, L, d_ff)
sums of ``u^2`` and (R,) token counts. For a request, the prompt's statistic (per block the
mean ``u^2``, square-rooted: the ``activation`` statistic per token) is compared with every
row's by the cosine similarity per block, averaged over blocks; the ``k`` most similar rows'
sums are added up and take the place of the global statistic in the fusion. A prompt about one
kind of text thus meets the prior of the replies the model writes to text of that kind.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def mean_statistic(sums: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token activation statistic ``sqrt(sums / tokens)`` of rows of sums (..., L, d_ff)
    over ``tokens`` (...,) tokens each, in float32."""
    if sums.shape[:-2] != tokens.shape:
        raise ValueError(f"sums of shape {tuple(sums.shape)} need one token count per row, got {tuple(tokens.shape)}")
    return (sums.float() / tokens.float().clamp_min(1)[..., None, None]).sqrt()


def unit_statistic(sums: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``mean_statistic`` scaled to unit length per row and block: what ``similarity`` compares."""
    stat = mean_statistic(sums, tokens)
    return stat / stat.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def similarity(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(S, R) mean over blocks of the cosine similarity of each query row's statistic (S, L, d)
    with each bank row's (R, L, d)."""
    if query.dim() != 3 or bank.dim() != 3 or query.shape[1:] != bank.shape[1:]:
        raise ValueError(f"query {tuple(query.shape)} and bank {tuple(bank.shape)} must be (rows, blocks, d_ff) "
                         "of one model")
    q = query / query.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    b = bank / bank.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return _mean_cosine(q, b.to(q.dtype))


def _mean_cosine(q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # one (S, L*d) x (L*d, R) product: the bank is read once
    return (q.reshape(q.shape[0], -1) @ b.reshape(b.shape[0], -1).T) / q.shape[1]


def nearest(query_unit: torch.Tensor, bank_unit: torch.Tensor, k: int) -> torch.Tensor:
    """(S, k) indices of the ``k`` bank rows most similar to each query row, from both sides'
    ``unit_statistic`` (the bank's computed once). Ties go to the lower row index."""
    if query_unit.dim() != 3 or bank_unit.dim() != 3 or query_unit.shape[1:] != bank_unit.shape[1:]:
        raise ValueError(f"query {tuple(query_unit.shape)} and bank {tuple(bank_unit.shape)} must be (rows, blocks, "
                         "d_ff) of one model")
    if not 1 <= k <= bank_unit.shape[0]:
        raise ValueError(f"k must be in [1, {bank_unit.shape[0]}] (the bank's rows), got {k}")
    sim = _mean_cosine(query_unit, bank_unit.to(query_unit.dtype))
    return torch.argsort(sim, dim=-1, descending=True, stable=True)[:, :k]


def nearest_sums(query_sums: torch.Tensor, query_tokens: torch.Tensor, bank_sums: torch.Tensor,
                 bank_tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(S, L, d) sums of the ``k`` bank rows most similar to each query row.

    query_sums (S, L, d) and query_tokens (S,): the requests' accumulated sums of ``u^2`` and
    their (possibly recency-weighted) token counts; bank_sums (R, L, d) and bank_tokens (R,):
    the greedy replies'."""
    order = nearest(unit_statistic(query_sums, query_tokens), unit_statistic(bank_sums, bank_tokens), k)
    return bank_sums.float()[order].sum(1)
