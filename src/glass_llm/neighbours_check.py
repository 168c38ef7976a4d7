"""Whether ``glass`` fuses each prompt with the greedy replies nearest to it, decided per model
on text the model writes itself.

``glass-neighbours`` replaces the one prior of greedy text by the summed statistic of the
greedy replies, of those kept in the prior's bank, most similar to the prompt (``neighbours``).
Measured on user text (BENCHMARKS.md, "The nearest greedy replies") that pays on Wikipedia
prompts on both models here and on Gemma-3-270m's CoQA prompts, and is within the noise
elsewhere: nothing promises it for every model, the bank may be too uniform to choose from.
``check_neighbours`` measures it once per prior, after the bank is written:

1. ``rows`` sequences written by the model (``lam_choice.self_written``: ``prompt_tokens``
   tokens sampled after its start play the prompt, the next ``gen_tokens`` greedy tokens the
   reply; sequence indices from ``NEIGHBOURS_OFFSET``, other sequences than the bank's and the
   other checks');
2. ``glass-neighbours`` and ``glass-one-prior`` (``glass`` with the one prior) at density
   ``CHECK_DENSITY`` are teacher-forced on every reply, and so is the dense model;
3. the geometric mean over rows of the ratio of their mean KL to the dense model, and the
   upper end of its 95% t interval. Where that ratio is below 1 but the interval still reaches
   1, ``extra_rows`` more sequences are written and the interval is taken over all of them
   (once: a second look only where the first one leans towards the nearest replies, so a
   model where they do not help pays for 64 rows only);
4. ratio and upper end are stored with the calibration (format 9).
   ``Calibration.use_neighbours`` holds where that upper end is below 1: ``glass`` then takes
   its global view from the nearest replies, and from the one prior elsewhere.

Prompts the model writes from its own start are closer to the average reply than a user's
prompts are, so the check is the harder test: it passes only where choosing among the replies
pays even there. A few minutes on 2 CPU cores: 161 s for SmolLM2-135M (64 rows, sharing the
cores), 363 s for Gemma-3-270m (128 rows).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch import nn

from .adapters import find_ffn_blocks
from .calibration import token_ids_of
from .config import GlassConfig
from .intervals import mean_ci
from .lam_choice import reply_kl, self_written, with_defaults
from .prior import Prior

NEIGHBOURS_OFFSET = 6 << 20
CHECK_DENSITY = 0.5
BASE_METHOD = "glass-one-prior"
CHECK_METHOD = "glass-neighbours"
DEFAULTS = {"rows": 64, "extra_rows": 64, "prompt_tokens": 8, "gen_tokens": 64, "chunk": 8}


@torch.no_grad()
def check_neighbours(model: nn.Module, tokenizer, prior: Prior, **settings) -> Prior:
    """``prior`` with the nearest-replies check in its calibration (the rest unchanged)."""
    opts = with_defaults(settings, DEFAULTS, "nearest-replies check")
    cal = prior.calibration
    if cal is None or cal.bank_sums is None or cal.reply_loss is None or cal.short_lam is None:
        raise ValueError("the nearest-replies check runs glass with the bank of greedy replies, which needs the "
                         "prior's complete calibration, its checks and its bank first (build.calibrated)")
    tokenizer = tokenizer if tokenizer is not None else token_ids_of(model)
    t0 = time.perf_counter()
    logs = _log_ratios(model, tokenizer, prior, opts, opts["rows"], NEIGHBOURS_OFFSET)
    ratio, upper = _ratio_and_upper(logs)
    if ratio < 1 <= upper and opts["extra_rows"] > 0:  # leaning towards the replies, not yet shown
        logs += _log_ratios(model, tokenizer, prior, opts, opts["extra_rows"], NEIGHBOURS_OFFSET + opts["rows"])
        ratio, upper = _ratio_and_upper(logs)
    meta = {**cal.meta, "neighbours_check": {**opts, "rows_used": len(logs), "offset": NEIGHBOURS_OFFSET,
                                             "density": CHECK_DENSITY, "seconds": round(time.perf_counter() - t0, 1)}}
    cal = replace(cal, neighbours_check=torch.tensor([ratio, upper]), meta=meta)
    cal.check(len(find_ffn_blocks(model)))
    return replace(prior, calibration=cal, meta={**prior.meta, "format_version": cal.format_version})


def _log_ratios(model: nn.Module, tokenizer, prior: Prior, opts: dict, rows: int, offset: int) -> list[float]:
    """log(KL of glass-neighbours / KL of glass-one-prior) per kept row of ``rows`` self-written ones."""
    prompts, mask, replies = self_written(model, tokenizer, opts["prompt_tokens"], opts["gen_tokens"], rows,
                                          int(prior.calibration.meta.get("seed", 0)), offset)
    if prompts.shape[0] == 0:
        return []
    configs = [GlassConfig(method=m, density=CHECK_DENSITY) for m in (BASE_METHOD, CHECK_METHOD)]
    kl = reply_kl(model, prompts, mask, replies, configs, prior, opts["chunk"]).clamp_min(1e-9)
    return (kl[1] / kl[0]).log().tolist()


def _ratio_and_upper(logs: list[float]) -> tuple[float, float]:
    """Geometric-mean ratio and the upper end of its 95% interval; fewer than 2 rows decide nothing."""
    if len(logs) < 2:
        return 1.0, math.inf
    ci = mean_ci(logs).exp()
    return ci.mean, ci.high if math.isfinite(ci.high) else math.inf
