"""Fidelity metrics over a continuation: pure tensor math."""

from __future__ import annotations

import torch


def kl_per_token(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || other) per position, from logits of shape (..., V); returns (...)."""
    lp = torch.log_softmax(ref_logits.float(), dim=-1)
    lq = torch.log_softmax(logits.float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``targets`` (...,) under ``logits`` (..., V)."""
    return -torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(token_nll(logits, targets).mean().exp())


def repeated_ngram_share(tokens: list[int], n: int = 4) -> float:
    """Share of the ``n``-grams of ``tokens`` that already occurred earlier in them: 0 for
    text that never repeats itself, near 1 for a loop (0 when there is no n-gram)."""
    seen: set[tuple[int, ...]] = set()
    repeated = total = 0
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        repeated += gram in seen
        seen.add(gram)
        total += 1
    return repeated / total if total else 0.0


# A reply whose second half has at least this share of repeated 4-grams has fallen into a loop.
LOOP_SHARE = 0.5


def falls_into_loop(tokens: list[int]) -> bool:
    """Whether the second half of ``tokens`` repeats itself (``LOOP_SHARE`` of its 4-grams)."""
    return repeated_ngram_share(tokens[len(tokens) // 2:]) >= LOOP_SHARE
