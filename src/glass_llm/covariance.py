"""The activation covariance of greedy replies, the calibration stage that ``glass-linear`` reads
(``lincomp``): every block's mean and covariance of ``z`` over the bank's greedy replies, stored
with the prior (format 10)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .adapters import FFNBlock
from .calibration import BANK_ROWS, _extension
from .greedy_text import _padded_chunks, greedy_replies
from .lincomp import round_covariance
from .prior import Prior


@torch.no_grad()
def greedy_moments(model: nn.Module, tokenizer, blocks: list[FFNBlock], seed: int = 0, rows: int = 256,
                   prefix: int = 8, length: int = 128) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first and second moments of every block's raw activation ``z`` over the greedy replies
    of ``greedy_bank`` (the same sequences): (n_blocks, d_ff) mean, (n_blocks, d_ff, d_ff)
    covariance, and the token count (float32 sums on the model's device: n_blocks x d_ff^2 of
    memory). What ``glass-linear`` predicts the neurons it leaves out from (``lincomp``)."""
    indices, _, counts, tokens = greedy_replies(model, tokenizer, blocks, seed, rows, prefix, length,
                                                "the activation covariance")
    n = int(counts.sum())
    if n < 2:
        raise ValueError("the greedy replies hold fewer than 2 tokens, too few for a covariance; raise the rows")
    d = blocks[0].d_ff
    device = next(model.parameters()).device
    first = torch.zeros(len(blocks), d, device=device)
    second = torch.zeros(len(blocks), d, d, device=device)
    current: dict = {}

    def hook(i):
        def record(module, args):
            where = current["where"]
            z = args[0].float().reshape(*where.shape, -1)[where]  # (tokens, d_ff); some models flatten (B*T, d_ff)
            first[i] += z.sum(0).to(first.device)
            second[i].addmm_(z.T.to(first.device), z.to(first.device))
        return record

    handles = [b.output_module.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]
    try:
        for ids, attn, where in _padded_chunks(tokenizer, indices, tokens, counts, prefix):
            current["where"] = where.bool().to(device)
            model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    mean = (first / n).double()
    cov = second.double() / n - mean.unsqueeze(2) * mean.unsqueeze(1)
    return mean.float().cpu(), cov.cpu(), n


@torch.no_grad()
def with_covariance(model: nn.Module, tokenizer, prior: Prior, rows: int = BANK_ROWS, **settings) -> Prior:
    """``prior`` with each block's activation covariance and mean on ``rows`` greedy replies (the bank's)
    in its calibration (what ``glass-linear`` predicts the neurons it leaves out from), the rest unchanged."""
    opts, blocks, tokenizer, seed = _extension(model, tokenizer, prior, settings)
    mean, cov, n = greedy_moments(model, tokenizer, blocks, seed, rows, opts["greedy_prefix"], opts["greedy_len"])
    # rounded as the file keeps it, so a prior just built compensates as its file will
    cal = replace(prior.calibration, lin_cov=round_covariance(cov), lin_mean=mean,
                  meta={**prior.calibration.meta, "lin_rows": rows, "lin_tokens": n})
    cal.check(len(blocks))
    return replace(prior, calibration=cal, meta={**prior.meta, "format_version": cal.format_version})
