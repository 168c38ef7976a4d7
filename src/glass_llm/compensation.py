"""Compensation for the neurons a selection leaves out, set once per selection on a block's state.

Mean compensation (``compensate``): the neurons a selection leaves out still have a mean
activation ``m`` (measured on text the model writes greedily), so their mean contribution
to the block's output, ``W_out[:, left] @ m[left]``, is added back as a bias: one vector
per set, computed once per selection, merged into the output bias for one set for the
batch (no work per decode step) or added per row for one set per row.

Linear compensation (``comp_linear``): they are predicted from the kept neurons by least
squares (``lincomp``); the constant joins the bias, the kept columns' change is written into
the compact output weight where there is one float matrix (else ``BlockState.lin_delta``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import compute_dtype
from .lincomp import corrected_weight, output_covariance
from .sliced import BlockState, _buffer, _stored_weight
from .stats import shrunk_mean


@torch.no_grad()
def left_out_output(output: nn.Module, selected: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The mean output of the neurons that ``selected`` (S, k) leaves out, (S, d_out) in
    float32: ``W_out[:, left] @ mean[left]`` for each set, ``mean`` the neurons' mean
    activation, (d_ff,) for every set or (S, d_ff) one per set. Read from the output
    projection as stored (int8 with its scales)."""
    w, scale = _stored_weight(output)
    left = torch.ones(selected.shape[0], w.shape[1], dtype=torch.float32, device=selected.device)
    left = left.scatter_(1, selected, 0.0) * mean.to(device=left.device, dtype=torch.float32)
    if scale is not None:
        return F.linear(left, w.float()) * scale.float()
    return F.linear(left.to(w.dtype), w).float()


@torch.no_grad()
def set_compensation(state: BlockState, output: nn.Module, selected: torch.Tensor, mean: torch.Tensor,
                     merge: bool) -> None:
    """Add the left-out neurons' mean output (``left_out_output``) to the block's output from
    now on: merged into the output bias (``merge``: the sliced path with one set for the
    batch, a buffer reused across requests), else added per row after the projection."""
    _set_shift(state, output, left_out_output(output, selected, mean), merge)


def _set_shift(state: BlockState, output: nn.Module, shift: torch.Tensor, merge: bool) -> None:
    """Add ``shift`` (S, d_out) to the block's output from now on: merged into the output bias
    (``merge``, one set for the batch), else added per row after the projection."""
    shift = shift.to(compute_dtype(output))
    if merge and shift.shape[0] == 1:
        bias = getattr(output, "bias", None)
        buf = _buffer(state.shift_bias, shift, (shift.shape[1],))
        buf.copy_(shift[0] if bias is None else shift[0] + bias.detach())
        state.shift_bias, state.shift_rows = buf, None
    else:
        state.shift_bias, state.shift_rows = None, shift


def dense_weight(module: nn.Module) -> torch.Tensor:
    """A projection's weight (out, in) in float32, int8 weights dequantized."""
    w, scale = _stored_weight(module)
    return w.float() if scale is None else w.float() * scale.float().unsqueeze(1)


@torch.no_grad()
def set_linear_compensation(state: BlockState, output: nn.Module, selected: torch.Tensor, cov: torch.Tensor,
                            mean: torch.Tensor, p: torch.Tensor, ridge: float, merge: bool) -> None:
    """Predict the neurons ``selected`` (S, k) leaves out from those it keeps, by least squares
    (``lincomp.corrected_weight``), from now on. The constant joins the output's bias as mean
    compensation does. The kept columns' change is written into the compact output weight where
    there is one float matrix for the batch (no work per decode step); else it is kept as
    ``lin_delta`` (S, n, d_out), over the neurons the output projection sees on this path, and
    added as ``z @ lin_delta`` after the projection."""
    w = dense_weight(output)
    w_new, shift = corrected_weight(w, cov, mean, selected, ridge, p)
    _set_shift(state, output, shift, merge)
    state.lin_delta = None
    if state.mode == "sliced" and state.row_mask is None and state.scale_out is None:  # float compact weights
        if state.weight_out.dim() == 2:  # (d_out, k), columns in the order of selected[0]
            state.weight_out.copy_(w_new[0].to(state.weight_out.dtype))
        else:  # "bmm": (S, k, d_out)
            state.weight_out.copy_(w_new.transpose(1, 2).to(state.weight_out.dtype))
        return
    delta = (w_new - w.t()[selected].transpose(1, 2)).transpose(1, 2)  # (S, k, d_out)
    if state.mode == "masked" or state.row_mask is not None:  # every neuron, or the union: zero outside a row's set
        full = delta.new_zeros(selected.shape[0], state.d_ff, delta.shape[-1])
        full.scatter_(1, selected.unsqueeze(-1).expand(-1, -1, delta.shape[-1]), delta)
        delta = full if state.mode == "masked" else full[:, state.union]
    state.lin_delta = delta.to(compute_dtype(output)).contiguous()


def running_mean(prior_mean: torch.Tensor, signed: torch.Tensor | None, sets: int, signed_tokens: float,
                 comp_tokens: float) -> torch.Tensor:
    """A block's mean activation for compensation: the prior's (d_ff,), or with ``comp_tokens``
    the mean of the generated tokens so far (their ``signed`` sums, weighted by recency as in the
    local statistic; the prompt's are left out, its first token's activations are outliers) with
    the prior's mean counted as ``comp_tokens`` more tokens, one row per set (S, d_ff)."""
    if not comp_tokens or signed is None:
        return prior_mean
    if sets == 1 and signed.shape[0] > 1:  # one set for the batch: the batch's mean
        signed = signed.mean(0, keepdim=True)
    return shrunk_mean(signed, signed_tokens, prior_mean, comp_tokens)


def linear_inputs(comp: list, devices: list,
                  blocks: list) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """Per block, on its device: the (covariance, mean) of ``comp`` in float32 and
    ``W_out @ covariance`` (computed once per ``apply_glass``; ``lincomp``); None for a block without a covariance."""
    out = []
    for (cov, mean), dev, block in zip(comp, devices, blocks):
        if cov is None:
            out.append(None)
            continue
        cov = cov.to(device=dev, dtype=torch.float32)
        out.append((cov, mean.to(device=dev, dtype=torch.float32),
                    output_covariance(dense_weight(block.output_module), cov)))
    return out
