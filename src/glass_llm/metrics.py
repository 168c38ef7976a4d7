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
