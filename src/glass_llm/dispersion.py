"""How much to trust the prompt: the lam rule of the adaptive methods (``glass-refresh``). Pure tensor math.

docs/method.md (section 4) gives the fusion ``s = lam * r_loc + (1 - lam) * r_glob``, the MAP ranking
when the local and global rankings are Mallows draws (Spearman's rho as distance) around
the true ranking with dispersions ``theta_L`` and ``theta_G``: ``lam = theta_L / (theta_L +
theta_G)``. Spearman's rho is a squared rank distance, so a Mallows draw is, for many
items, the true rank plus noise of variance ``sigma^2 = 1 / (2 theta)`` per item, and
``lam = sigma_G^2 / (sigma_L^2 + sigma_G^2)``.

Estimating it on the model's own text. Take a self-sampled sequence, a window of ``w``
tokens (the "prompt") and the ``horizon`` tokens after it (the "generation"): the
window's ranking is ``r_L``, the prior's is ``r_G``, and the ranking by the generation's
own statistic (the oracle) is ``r_O``, the ranking we want to predict. The weight that
predicts ``r_O`` best in mean square,

    lam = <r_G - r_O, r_G - r_L> / ||r_G - r_L||^2      (pooled over windows),

equals ``sigma_G^2 / (sigma_L^2 + sigma_G^2)`` when the two views err independently around
the truth, even though ``r_O`` is itself a noisy look at it (its noise cancels in the
numerator), and it stays the best weight when the views' errors correlate. It is
estimated per layer and per window length ``w`` in ``WINDOWS``: ``sigma_L`` shrinks as the
window grows, so ``lam`` grows with the evidence the prompt carries, and how fast differs
by layer. A prompt of ``n`` tokens gets the lam of its layer interpolated linearly in
``log n`` between the measured windows (held constant beyond them).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .ranking import ranks

WINDOWS = (1, 2, 4, 8, 16, 32, 64)


def window_lams(u2: torch.Tensor, lengths: torch.Tensor, global_scores: torch.Tensor,
                windows: Sequence[int] = WINDOWS, horizon: int = 64, stride: int = 8) -> torch.Tensor:
    """Least-squares lam for each window length, one layer.

    u2: (B, T, d_ff) per-token statistic ``u_tj^2`` of B sequences; lengths: (B,) valid
    tokens per sequence; global_scores: (d_ff,) the prior's scores. A window ``[s, s+w)``
    with ``s`` a multiple of ``stride`` counts when ``s + w + horizon <= length``.
    Returns (len(windows),) float32 in [0, 1]; NaN where no window fits.
    """
    if u2.dim() != 3 or lengths.shape != u2.shape[:1] or global_scores.shape != u2.shape[2:]:
        raise ValueError(f"expected u2 (B, T, d_ff), lengths (B,) and global scores (d_ff,), got "
                         f"{tuple(u2.shape)}, {tuple(lengths.shape)}, {tuple(global_scores.shape)}")
    B, T, d = u2.shape
    cum = torch.cat([torch.zeros(B, 1, d), u2.float().cumsum(1)], dim=1)
    r_glob = ranks(global_scores.float())
    out = []
    for w in windows:
        num, den = 0.0, 0.0
        for s in range(0, T - w - horizon + 1, stride):
            rows = (lengths >= s + w + horizon).nonzero().flatten()
            if rows.numel() == 0:
                continue
            local = cum[rows, s + w] - cum[rows, s]
            oracle = cum[rows, s + w + horizon] - cum[rows, s + w]
            diff = r_glob - ranks(local)  # integers below 2**24: exact in float32
            num += float(((r_glob - ranks(oracle)) * diff).double().sum())
            den += float(diff.double().square().sum())
        out.append(min(1.0, max(0.0, num / den)) if den > 0 else float("nan"))
    return torch.tensor(out, dtype=torch.float32)


def fill_missing(lam: torch.Tensor) -> torch.Tensor:
    """Carry the last measured lam forward over windows that no sequence could hold
    (NaN), and back over leading ones; a row with nothing measured is an error."""
    out = lam.clone()
    for row in out:
        ok = torch.isfinite(row).nonzero().flatten()
        if ok.numel() == 0:
            raise ValueError("no window could be measured: the calibration sequences are too short")
        last = float(row[ok[0]])
        for j in range(row.numel()):
            if torch.isfinite(row[j]):
                last = float(row[j])
            else:
                row[j] = last
    return out


def lam_for_tokens(table: torch.Tensor, windows: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """lam per row for prompts of ``n_tokens`` (B,), from one layer's ``table`` (W,)
    measured at ``windows`` (W,): linear in ``log n``, constant outside the windows.
    A (G, W) table gives the lams of G layers at once, (G, B)."""
    logw = windows.double().log()
    x = n_tokens.double().clamp(min=float(windows[0]), max=float(windows[-1])).log()
    hi = torch.searchsorted(logw.to(x.device), x).clamp(1, len(windows) - 1)
    lo = hi - 1
    lw, tb = logw.to(x.device), table.double().to(x.device)
    t = ((x - lw[lo]) / (lw[hi] - lw[lo])).clamp(0, 1)
    return (tb[..., lo] + t * (tb[..., hi] - tb[..., lo])).float()


def tilt(lam: torch.Tensor, user_lam: float | None) -> torch.Tensor:
    """Shift calibrated lams by the user's lam in log-odds: 0.5 (or None) keeps them,
    1 trusts only the prompt, 0 only the prior."""
    if user_lam is None or user_lam == 0.5:
        return lam
    if user_lam >= 1.0:
        return torch.ones_like(lam)
    if user_lam <= 0.0:
        return torch.zeros_like(lam)
    shift = math.log(user_lam / (1.0 - user_lam))
    return torch.sigmoid(torch.logit(lam.clamp(1e-6, 1 - 1e-6)) + shift)


def check_table(table: torch.Tensor, windows: torch.Tensor, n_blocks: int) -> None:
    if windows.dim() != 1 or windows.numel() < 2 or not bool((windows[1:] > windows[:-1]).all()) \
            or not bool((windows >= 1).all()):
        raise ValueError(f"lam windows must be increasing token counts >= 1, got {windows.tolist()}")
    if table.shape != (n_blocks, windows.numel()):
        raise ValueError(f"the lam table has shape {tuple(table.shape)} but the model has {n_blocks} FFN blocks "
                         f"and the table {windows.numel()} windows: it was measured on another model")
    if not bool(((table >= 0) & (table <= 1)).all()):
        raise ValueError("the lam table holds values outside [0, 1]; recompute it")


LAM_GRID = tuple(i / 20 for i in range(21))


def window_score_lams(u2: torch.Tensor, lengths: torch.Tensor, prior_mean: torch.Tensor,
                      windows: Sequence[int] = WINDOWS, horizon: int = 64, stride: int = 8,
                      density: float = 0.5, grid: Sequence[float] = LAM_GRID) -> torch.Tensor:
    """Score fusion's lam for each window length, one layer: the weight ``lam`` in
    ``lam * (window's mean u^2) + (1 - lam) * (prior's mean u^2)`` whose top ``density``
    neurons overlap most, on average, with the top neurons of the following ``horizon``
    tokens. Same windows and arguments as :func:`window_lams`; NaN where none fits.

    Both means are distributions over the neurons (each token's ``u^2`` sums to 1), so the
    mix is the posterior-mean estimate of the generation's statistic when the prior counts
    as ``n (1 - lam) / lam`` pseudo-tokens against the prompt's ``n``.
    """
    B, T, d = u2.shape
    k = max(1, min(d, int(round(density * d))))
    cum = torch.cat([torch.zeros(B, 1, d), u2.float().cumsum(1)], dim=1)
    prior = prior_mean.float()
    out = []
    for w in windows:
        locs, orcs = [], []
        for s in range(0, T - w - horizon + 1, stride):
            rows = (lengths >= s + w + horizon).nonzero().flatten()
            if rows.numel():
                locs.append((cum[rows, s + w] - cum[rows, s]) / w)
                orcs.append(cum[rows, s + w + horizon] - cum[rows, s + w])
        if not locs:
            out.append(float("nan"))
            continue
        local, oracle = torch.cat(locs), torch.cat(orcs)
        truth = torch.zeros(local.shape, dtype=torch.bool).scatter_(1, oracle.topk(k, dim=1).indices, True)
        def overlap(lam: float) -> float:
            top = (lam * local + (1 - lam) * prior).topk(k, dim=1).indices
            return float(truth.gather(1, top).float().mean())

        coarse = list(grid[::2])  # then the neighbours of the best coarse point
        scores = {lam: overlap(lam) for lam in coarse}
        j = grid.index(max(coarse, key=lambda lam: (scores[lam], -lam)))
        for lam in grid[max(0, j - 1):j + 2]:
            if lam not in scores:
                scores[lam] = overlap(lam)
        out.append(float(max(scores, key=lambda lam: (scores[lam], -lam))))
    return torch.tensor(out, dtype=torch.float32)
