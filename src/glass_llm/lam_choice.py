"""The short-prompt lam of the default ``glass`` method, chosen per model on text it writes itself.

With the prior of greedy text and compensation, how much weight an 8-token prompt deserves
against the prior depends on the model: SmolLM2's own text prefers lam 0.25 to the paper's 0.5
at 8 tokens, Gemma-3-270m's does not (BENCHMARKS.md, "A lam that grows with the prompt").
``check_short_lam`` measures it once per prior, after the rest of the calibration:

1. ``rows`` sequences written by the model: ``prompt_tokens`` tokens sampled at temperature 1
   after its own start play the prompt, the next ``gen_tokens`` tokens decoded greedily the
   reply (sequence indices from ``LAM_OFFSET``: other sequences than the prior's and the rest
   of the calibration's); rows that end before ``gen_tokens`` tokens are left out;
2. ``glass`` at density ``CHECK_DENSITY`` with one fixed lam (``glass-fixed-lam``) is
   teacher-forced on every reply at lam 0.5 and at each of ``CANDIDATES``
   (``teacher.continuation_logits``: what decoding computes), and so is the dense model;
3. per candidate, the geometric mean over rows of the ratio of the mean KL to the dense model
   (candidate over lam 0.5), and the upper end of its 95% t interval, are stored with the
   calibration (format 6). ``Calibration.short_lam`` takes a candidate only where that upper
   end is below 1; ``glass`` then fuses at it up to 8 prompt tokens and at 0.5 from 32, linear
   in the log of the length between (``selection.build_selector``).

The check is a decision made with 95% confidence on a few thousand tokens of the model's own
text, never on evaluation text. About 30 s for SmolLM2-135M on 2 CPU cores.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch import nn

from .adapters import find_ffn_blocks
from .calibration import token_ids_of
from .calibration_data import NEUTRAL_LAM
from .config import GlassConfig
from .intervals import mean_ci
from .metrics import kl_per_token
from .prior import Prior
from .self_sample import sample_and_record, self_prompts
from .teacher import continuation_logits

LAM_OFFSET = 3 << 20
CANDIDATES = (0.25,)
CHECK_DENSITY = 0.5
CHECK_METHOD = "glass-fixed-lam"
DEFAULTS = {"rows": 32, "prompt_tokens": 8, "gen_tokens": 64, "chunk": 8}


def self_written(model: nn.Module, tokenizer, prompt_tokens: int, gen_tokens: int, rows: int, seed: int = 0,
                 offset: int = LAM_OFFSET) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompts, prompt_mask, replies)`` of the rows whose greedy reply reached ``gen_tokens``
    tokens, on the model's device: each prompt is the model's start plus ``prompt_tokens``
    sampled tokens (left-padded), each reply the next ``gen_tokens`` greedy tokens."""
    blocks = find_ffn_blocks(model)
    indices = list(range(offset, offset + rows))
    _, counts, tokens = sample_and_record(model, tokenizer, blocks, indices, prompt_tokens + gen_tokens, seed,
                                          greedy_after=prompt_tokens)
    starts = self_prompts(tokenizer)
    keep = [r for r in range(rows) if int(counts[r]) >= gen_tokens]
    device = next(model.parameters()).device
    if not keep:
        empty = torch.zeros((0, 1), dtype=torch.long, device=device)
        return empty, empty, torch.zeros((0, gen_tokens), dtype=torch.long, device=device)
    seqs = [starts[indices[r] % len(starts)] + tokens[r, :prompt_tokens].tolist() for r in keep]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(prompts)
    for j, s in enumerate(seqs):
        prompts[j, width - len(s):] = torch.tensor(s)
        mask[j, width - len(s):] = 1
    replies = tokens[keep, prompt_tokens:prompt_tokens + gen_tokens]
    return prompts.to(device), mask.to(device), replies.to(device)


def reply_kl(model: nn.Module, prompts: torch.Tensor, mask: torch.Tensor, replies: torch.Tensor,
             configs: list[GlassConfig], prior: Prior, chunk: int = 8) -> torch.Tensor:
    """Mean KL to the dense model over each reply's sparse positions (all but the first token,
    which the dense prefill predicts), per config and row: (len(configs), rows). Rows go
    ``chunk`` at a time (the logits of a large vocabulary are big)."""
    out = torch.zeros(len(configs), prompts.shape[0])
    for lo in range(0, prompts.shape[0], chunk):
        p, m, r = prompts[lo:lo + chunk], mask[lo:lo + chunk], replies[lo:lo + chunk]
        dense, _ = continuation_logits(model, p, r, prompt_mask=m)
        for c, config in enumerate(configs):
            logits, _ = continuation_logits(model, p, r, config, prior, prompt_mask=m)
            out[c, lo:lo + len(p)] = kl_per_token(dense[:, 1:], logits[:, 1:]).mean(-1).cpu()
    return out


def with_defaults(settings: dict, defaults: dict, what: str) -> dict:
    """``defaults`` updated by ``settings``; a setting ``defaults`` does not name is an error about ``what``."""
    unknown = set(settings) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **settings}


@torch.no_grad()
def check_short_lam(model: nn.Module, tokenizer, prior: Prior, **settings) -> Prior:
    """``prior`` with the short-prompt lam check in its calibration (the rest unchanged)."""
    opts = with_defaults(settings, DEFAULTS, "lam check")
    cal = prior.calibration
    if cal is None or not cal.complete:
        raise ValueError("the short-prompt lam check runs glass, which needs the prior's complete calibration first "
                         "(calibration.calibrate_prior)")
    tokenizer = tokenizer if tokenizer is not None else token_ids_of(model)
    t0 = time.perf_counter()
    seed = int(cal.meta.get("seed", 0))
    prompts, mask, replies = self_written(model, tokenizer, opts["prompt_tokens"], opts["gen_tokens"],
                                          opts["rows"], seed)
    lams = (NEUTRAL_LAM,) + CANDIDATES
    ratios, uppers = [1.0] * len(CANDIDATES), [math.inf] * len(CANDIDATES)
    if prompts.shape[0] >= 2:  # fewer rows decide nothing: the neutral lam stays
        configs = [GlassConfig(method=CHECK_METHOD, density=CHECK_DENSITY, lam=lam) for lam in lams]
        kl = reply_kl(model, prompts, mask, replies, configs, prior, opts["chunk"]).clamp_min(1e-9)
        for c in range(len(CANDIDATES)):
            ci = mean_ci((kl[c + 1] / kl[0]).log().tolist()).exp()
            ratios[c], uppers[c] = ci.mean, ci.high if math.isfinite(ci.high) else math.inf
    meta = {**cal.meta, "lam_check": {**opts, "rows_used": int(prompts.shape[0]), "offset": LAM_OFFSET,
                                      "density": CHECK_DENSITY, "seconds": round(time.perf_counter() - t0, 1)}}
    cal = replace(cal, lam_check_lams=torch.tensor(CANDIDATES), lam_check_ratio=torch.tensor(ratios),
                  lam_check_upper=torch.tensor(uppers), neighbours_check=None, meta=meta)  # measured with glass: anew
    cal.check(len(find_ffn_blocks(model)))
    return replace(prior, calibration=cal, meta={**prior.meta, "format_version": cal.format_version})
