"""Linear compensation: the neurons a selection leaves out, predicted from those it keeps.

Mean compensation (``compensation.set_compensation``) adds back ``W_out[:, left] @ m[left]``, the left-out
neurons' mean output. Their activations are correlated with the kept ones', so a better guess of
``z_left`` for the token at hand is the least-squares one given ``z_kept``:

    z_left ~ m_left + A (z_kept - m_kept),   A = S[left, kept] (S[kept, kept] + rho I)^-1,

``S`` the covariance of a block's activations ``z`` on text the model writes greedily, ``m`` their
mean, ``rho`` a ridge that shrinks ``A`` toward zero (mean compensation) where ``S`` is not to be
trusted. With ``P = W_out S`` computed once per block, the block's output becomes

    W' z_kept + (W_out m - W' m_kept),   W' = (P[:, kept] + rho W_out[:, kept]) (S[kept, kept] + rho I)^-1,

(``W_out[:, kept] + W_out[:, left] A`` written without the left-out columns): new kept columns of the
output weight and a constant, computed once per selection by one Cholesky factorisation of the
kept neurons' covariance. A low-rank covariance is not enough: on Gemma-3-270m, 256 leading
eigenvectors of 2048 (the rest as independent noise) kept only two thirds of the gain
(BENCHMARKS.md, "Linear compensation").

Pure tensor math: no model, no hooks.
"""

from __future__ import annotations

import torch

DEFAULT_RIDGE = 0.5  # rho, in units of the kept neurons' mean variance (BENCHMARKS.md, "Linear compensation")


def output_covariance(w_out: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``P = W_out S`` (d_out, d_ff) in float32, computed once per block."""
    return w_out.float() @ cov.float()


def corrected_weight(w_out: torch.Tensor, cov: torch.Tensor, mean: torch.Tensor, kept: torch.Tensor,
                     ridge: float = DEFAULT_RIDGE, p: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', shift)`` for the sets ``kept`` (S, k) of a block with output weight ``w_out`` (d_out, d_ff),
    activation covariance ``cov`` (d_ff, d_ff) and mean ``mean`` (d_ff,): the block's output with the
    other neurons predicted is ``z_kept @ W'[s].T + shift[s]``, W' (S, d_out, k) with its columns in
    the order of ``kept[s]``, shift (S, d_out); float32. ``p`` is ``output_covariance(w_out, cov)``.
    ``mean`` may also be (S, d_ff), one per set (a mean that follows the reply): the prediction then
    centres each set's neurons on its own mean, with the one covariance."""
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0 (it keeps the kept neurons' covariance invertible), got {ridge}")
    d = cov.shape[0]
    if cov.shape != (d, d) or mean.shape not in ((d,), (kept.shape[0], d)) or w_out.shape[1] != d:
        raise ValueError(f"need a (d_ff, d_ff) covariance, a (d_ff,) mean (or one per set) and a (d_out, d_ff) "
                         f"weight, got {tuple(cov.shape)}, {tuple(mean.shape)} and {tuple(w_out.shape)}")
    w, cov, mean = w_out.float(), cov.float(), mean.float()
    p = output_covariance(w, cov) if p is None else p.float()
    rows = kept.unsqueeze(-1)
    s_kk = cov[rows, kept.unsqueeze(-2)]  # (S, k, k)
    rho = ridge * s_kk.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)  # (S,)
    eye = torch.eye(kept.shape[-1], dtype=cov.dtype, device=cov.device)
    chol = torch.linalg.cholesky(s_kk + rho[:, None, None] * eye)
    rhs = (p.t()[kept] + rho[:, None, None] * w.t()[kept])  # (S, k, d_out): (P_k + rho W_k)^T
    w_new = torch.cholesky_solve(rhs, chol).transpose(1, 2)  # (S, d_out, k); S_kk + rho I is symmetric
    means = mean.expand(kept.shape[0], d)
    shift = means @ w.t() - (w_new @ means.gather(1, kept).unsqueeze(-1)).squeeze(-1)
    return w_new, shift


def split_covariance(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, d, d) covariances as float16 correlations and float32 standard deviations (L, d): half
    precision keeps every entry to about 1e-3 of its two neurons' scale, where it would lose the
    small neurons' covariances outright."""
    std = cov.float().diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
    inv = torch.where(std > 0, 1.0 / std.clamp_min(1e-30), torch.zeros_like(std))
    corr = (cov.float() * inv.unsqueeze(2) * inv.unsqueeze(1)).clamp(-1, 1)
    return corr.half().contiguous(), std.contiguous()


def join_covariance(corr: torch.Tensor, std: torch.Tensor | None) -> torch.Tensor:
    if std is None:
        raise ValueError("the prior's activation covariance has no standard deviations; rebuild it with "
                         "`glass prior MODEL --recalibrate`")
    std = std.float()
    return corr.float() * std.unsqueeze(2) * std.unsqueeze(1)


def round_covariance(cov: torch.Tensor) -> torch.Tensor:
    """``cov`` as the prior file stores it and reads it back."""
    return join_covariance(*split_covariance(cov))


def check_covariance(cov: torch.Tensor | None, mean: torch.Tensor | None, n_blocks: int, d_ff: int | None) -> None:
    """Raise ``ValueError`` when (L, d, d) covariances and their (L, d) means are not both there, do not
    fit a model of ``n_blocks`` FFN blocks of ``d_ff`` neurons (None: any), or hold invalid values."""
    if cov is None or mean is None:
        raise ValueError("the activation covariance needs its mean stored with it")
    if (cov.dim() != 3 or cov.shape[0] != n_blocks or cov.shape[1] != cov.shape[2] or mean.shape != cov.shape[:2]
            or (d_ff is not None and cov.shape[1] != d_ff)):
        raise ValueError(f"the activation covariance has shape {tuple(cov.shape)} with a mean of shape "
                         f"{tuple(mean.shape)}, which does not fit a model of {n_blocks} FFN blocks: it was measured "
                         "on another model, or the file is damaged; rebuild it with `glass prior MODEL --recalibrate`")
    if not bool(torch.isfinite(cov).all() & torch.isfinite(mean).all() & (cov.diagonal(dim1=1, dim2=2) >= 0).all()):
        raise ValueError("the activation covariance holds invalid values; rebuild it with "
                         "`glass prior MODEL --recalibrate`")
