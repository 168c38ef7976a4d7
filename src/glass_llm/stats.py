"""Neuron statistics (docs/method.md, section 2): pure tensor math, no model plumbing.

A statistic is accumulated in two steps so that it can be summed over batches,
prompts and processes before it is finalised:

* ``accumulate_activation(z, mask)`` returns, per batch row, ``sum_t u_tj^2`` where
  ``u_t = z_t / ||z_t||_2`` over the valid (unpadded) tokens ``t``;
* ``activation_from_sums`` takes the square root: ``a_j = sqrt(sum_t u_tj^2)``;
* ``impact_from_activation`` scales it by the output-projection column norms:
  ``i_j = a_j * ||W_down[:, j]||_2``.
"""

from __future__ import annotations

import torch

STATISTICS = ("activation", "impact")
_EPS = 1e-12


def accumulate_activation(z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of squared, per-token L2-normalised activations.

    z: (B, T, d_ff) intermediate FFN activations. mask: (B, T), 1 for real tokens,
    0 for padding (``None`` means every token counts). Returns (B, d_ff) in float32.
    """
    if z.dim() != 3:
        raise ValueError(f"expected activations of shape (batch, tokens, d_ff), got {tuple(z.shape)}")
    z = z.float()
    norms = z.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    u2 = (z / norms).square()
    if mask is not None:
        if mask.shape != z.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match activations {tuple(z.shape[:2])}")
        u2 = u2 * mask.to(device=u2.device, dtype=u2.dtype).unsqueeze(-1)
    return u2.sum(dim=1)


def accumulate_signed(z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of the raw activations ``sum_t z_tj`` over the valid tokens, per batch row.

    The signed counterpart of ``accumulate_activation``: divided by the token count it is
    the mean activation of every neuron, from which the mean output of the neurons a
    selection leaves out is computed (``compensation``). z: (B, T, d_ff); mask: (B, T) or
    ``None``. Returns (B, d_ff) in float32.
    """
    if z.dim() != 3:
        raise ValueError(f"expected activations of shape (batch, tokens, d_ff), got {tuple(z.shape)}")
    z = z.float()
    if mask is not None:
        if mask.shape != z.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match activations {tuple(z.shape[:2])}")
        z = z * mask.to(device=z.device, dtype=z.dtype).unsqueeze(-1)
    return z.sum(dim=1)


def shrunk_mean(signed_sums: torch.Tensor, count: float, prior_mean: torch.Tensor,
                prior_count: float) -> torch.Tensor:
    """The mean activation of ``count`` tokens (their ``accumulate_signed`` sums, (B, d_ff))
    shrunk toward ``prior_mean`` (d_ff,), which counts as ``prior_count`` more tokens:
    ``(prior_count * prior_mean + signed_sums) / (prior_count + count)``, one row per batch row."""
    if count < 0 or prior_count <= 0:
        raise ValueError(f"need count >= 0 and prior_count > 0, got count={count}, prior_count={prior_count}")
    return (prior_count * prior_mean.to(signed_sums.dtype) + signed_sums) / (prior_count + count)


def recency_weights(n: int, halflife: float) -> tuple[torch.Tensor, float]:
    """Weights of ``n`` new tokens, oldest first, and the factor for the sums before them.

    A token ``a`` tokens older than the newest weighs ``0.5 ** (a / halflife)`` (the newest
    1); sums accumulated before the ``n`` new tokens are multiplied by ``0.5 ** (n / halflife)``,
    so that repeating this at every re-selection weighs every token by its age at the last
    one. ``halflife`` 0 means equal weights: all ones and a factor of 1.
    """
    if n < 0 or halflife < 0:
        raise ValueError(f"need n >= 0 and halflife >= 0, got n={n}, halflife={halflife}")
    if halflife == 0:
        return torch.ones(n), 1.0
    age = torch.arange(n - 1, -1, -1, dtype=torch.float64)
    return (0.5 ** (age / halflife)).float(), 0.5 ** (n / halflife)


def activation_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """``a_j = sqrt(sum_t u_tj^2)`` from the accumulated sums."""
    return sums.clamp_min(0).sqrt()


def impact_from_activation(activation: torch.Tensor, down_col_norms: torch.Tensor) -> torch.Tensor:
    """``i_j = a_j * ||W_down[:, j]||``; ``down_col_norms`` has shape (d_ff,)."""
    return activation * down_col_norms.to(activation.dtype)


def finalize(sums: torch.Tensor, statistic: str, down_col_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Turn accumulated sums into the named statistic ("activation" or "impact")."""
    a = activation_from_sums(sums)
    if statistic == "activation":
        return a
    if statistic == "impact":
        if down_col_norms is None:
            raise ValueError("the impact statistic needs the output projection's column norms")
        return impact_from_activation(a, down_col_norms)
    raise ValueError(f"unknown statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")
