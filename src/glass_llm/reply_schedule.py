"""The per-layer schedule of ``glass``, measured on the greedy replies it serves.

The prior's sensitivity profile (``calibration``, step 3) scales each block's output error on
temperature-1 samples to KL units with one forward per block on the first tokens of a few sampled
rows, whose start (BOS, or a chat model's empty turn) is much of that text. On the greedy replies
that ``glass`` serves the blocks' losses differ, on SmolLM2-135M by 34 times for one block
(BENCHMARKS.md, "A schedule measured on greedy replies"). ``check_reply_schedule`` measures them
once per prior, after the short-prompt lam check:

1. the losses: on ``gain_rows`` replies written by the model (``lam_choice.self_written``: 8 tokens
   sampled after the model's start play the prompt, the next ``gen_tokens`` greedy tokens the reply;
   sequence indices from ``GAIN_OFFSET``), the mean KL to the dense model per token when only block
   ``i`` runs at density ``REPLY_DENSITY``, selected as ``glass`` selects (given as explicit
   per-block densities, so no schedule enters);
2. the reply profile (``Calibration.reply_profile``): the stored profile with each block's row
   rescaled so that its value at that density is the block's loss; the shape of each block's
   error curve is kept;
3. the check: on ``check_rows`` other replies (from ``CHECK_OFFSET``), ``glass`` at each of
   ``CHECK_DENSITIES`` with the schedule allocated from the reply profile, against one density for
   all: the geometric mean over replies of the KL ratio and the upper end of its 95% t interval.
   ``glass`` uses the schedule at a density only where that upper end, interpolated
   in density, is below 1 (``Calibration.use_reply_schedule``).

Nothing here reads evaluation text. About a minute for SmolLM2-135M on 2 CPU cores.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch import nn

from .adapters import find_ffn_blocks
from .calibration import token_ids_of
from .calibration_data import REPLY_DENSITY
from .config import GlassConfig
from .intervals import mean_ci
from .lam_choice import reply_kl, self_written, with_defaults
from .prior import Prior
from .schedule import allocate

GAIN_OFFSET = 4 << 20
CHECK_OFFSET = 5 << 20
CHECK_DENSITIES = (0.3, 0.5, 0.7)
MEASURE_METHOD = "glass-one-prior"  # glass before the nearest-replies check, which comes after
DEFAULTS = {"gain_rows": 12, "check_rows": 32, "prompt_tokens": 8, "gen_tokens": 64, "chunk": 8}


def block_losses(model: nn.Module, tokenizer, prior: Prior, rows: int, prompt_tokens: int, gen_tokens: int,
                 seed: int = 0, chunk: int = 8) -> tuple[torch.Tensor, int]:
    """(n_blocks,) mean KL per token when only block ``i`` runs at ``REPLY_DENSITY`` on greedy replies, and
    the number of replies used (those that reached ``gen_tokens`` tokens)."""
    n = len(find_ffn_blocks(model))
    prompts, mask, replies = self_written(model, tokenizer, prompt_tokens, gen_tokens, rows, seed, GAIN_OFFSET)
    if prompts.shape[0] == 0:
        raise ValueError(f"none of the {rows} greedy replies reached {gen_tokens} tokens; raise gain_rows")
    configs = [GlassConfig(method=MEASURE_METHOD, density=tuple(REPLY_DENSITY if j == i else 1.0 for j in range(n)))
               for i in range(n)]
    return reply_kl(model, prompts, mask, replies, configs, prior, chunk).mean(1), int(prompts.shape[0])


@torch.no_grad()
def check_reply_schedule(model: nn.Module, tokenizer, prior: Prior, **settings) -> Prior:
    """``prior`` with the schedule of greedy replies and its check in its calibration (the rest unchanged)."""
    opts = with_defaults(settings, DEFAULTS, "reply schedule")
    cal = prior.calibration
    if cal is None or not cal.complete or cal.short_lam is None:
        raise ValueError("the schedule of greedy replies is measured with glass, which needs the prior's complete "
                         "calibration and short-prompt lam check first (build.calibrated)")
    tokenizer = tokenizer if tokenizer is not None else token_ids_of(model)
    t0 = time.perf_counter()
    seed = int(cal.meta.get("seed", 0))
    d_ff = [b.d_ff for b in find_ffn_blocks(model)]
    losses, used = block_losses(model, tokenizer, prior, opts["gain_rows"], opts["prompt_tokens"],
                                opts["gen_tokens"], seed, opts["chunk"])
    with_loss = replace(cal, reply_loss=losses)
    prompts, mask, replies = self_written(model, tokenizer, opts["prompt_tokens"], opts["gen_tokens"],
                                          opts["check_rows"], seed, CHECK_OFFSET)
    ratios, uppers = [1.0] * len(CHECK_DENSITIES), [math.inf] * len(CHECK_DENSITIES)
    if prompts.shape[0] >= 2:  # fewer rows decide nothing: one density stays
        configs = []
        for d in CHECK_DENSITIES:
            k = allocate(with_loss.reply_profile, cal.grid, d_ff, d)
            configs += [GlassConfig(method=MEASURE_METHOD, density=tuple(a / n for a, n in zip(k, d_ff))),
                        GlassConfig(method=MEASURE_METHOD, density=(d,) * len(d_ff))]  # one density for all
        kl = reply_kl(model, prompts, mask, replies, configs, prior, opts["chunk"]).clamp_min(1e-9)
        for c in range(len(CHECK_DENSITIES)):
            ci = mean_ci((kl[2 * c] / kl[2 * c + 1]).log().tolist()).exp()
            ratios[c], uppers[c] = ci.mean, ci.high if math.isfinite(ci.high) else math.inf
    meta = {**cal.meta, "reply_schedule": {**opts, "gain_rows_used": used, "check_rows_used": int(prompts.shape[0]),
                                           "gain_offset": GAIN_OFFSET, "check_offset": CHECK_OFFSET,
                                           "seconds": round(time.perf_counter() - t0, 1)}}
    cal = replace(with_loss, reply_check_densities=torch.tensor(CHECK_DENSITIES),
                  reply_check_ratio=torch.tensor(ratios), reply_check_upper=torch.tensor(uppers),
                  neighbours_check=None, meta=meta)  # the nearest-replies check measures glass: anew
    cal.check(len(d_ff))
    return replace(prior, calibration=cal, meta={**prior.meta, "format_version": cal.format_version})
