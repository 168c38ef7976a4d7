"""Is the per-layer schedule measured on the text that ``glass`` serves? Per-block loss on greedy replies.

    python benchmarks/greedy_gain.py --model smollm2-135m   # writes results/greedy-gain-smollm2-135m.json

The prior's sensitivity profile (``calibration``, step 3) is each block's output error on
temperature-1 samples, scaled to KL units by one forward per block on the first 32 tokens of 4 sampled
rows, each row's start included (BOS, or on every other row of a chat model its empty chat turn,
some 30 tokens on SmolLM2). ``glass`` then allocates the per-layer densities from it and
serves greedy replies. This script measures, on the model's own greedy replies instead
(``lam_choice.self_written``: 8 sampled tokens after the model's start play the prompt, the next
``--gen-tokens`` greedy tokens the reply; the sequences of ``glass_llm.reply_schedule``, other than
the prior's and the rest of its calibration's):

1. per block ``i``, the KL to the dense model when only block ``i`` runs at density 0.5, selected
   as ``glass`` selects (``reply_schedule.block_losses``, the other blocks dense), against the profile's
   value at 0.5;
2. on other replies (those of the reply schedule's check), ``glass`` at density 0.5 with three per-layer
   allocations given as explicit densities: one density for all, the prior's schedule
   (``schedule.allocate`` on the stored profile) and the schedule of the profile rescaled per block
   to the greedy losses of step 1 (each block's error curve kept, its level set by step 1);
   the geometric mean of the per-reply KL ratio against one density, with its 95% t interval.

The record shows whether the stored schedule fits greedy replies; the calibration of
``glass-reply-schedule`` (``reply_schedule``) makes the same measurement with 12 rows for the losses.
Writes ``benchmarks/results/greedy-gain-MODEL.json``; ``markdown`` renders it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from glass_llm import load_model
from glass_llm.adapters import find_ffn_blocks
from glass_llm.build import get_or_build_prior
from glass_llm.engine import GlassConfig
from glass_llm.intervals import mean_ci
from glass_llm.io import atomic_write
from glass_llm.calibration_data import REPLY_DENSITY as DENSITY
from glass_llm.lam_choice import reply_kl, self_written
from glass_llm.reply_schedule import CHECK_OFFSET as EVAL_OFFSET
from glass_llm.reply_schedule import block_losses
from glass_llm.schedule import allocate

HERE = Path(__file__).resolve().parent


def record_path(model: str) -> Path:
    return HERE / "results" / f"greedy-gain-{model}.json"


def _ratio(kl: torch.Tensor, base: torch.Tensor) -> dict:
    ci = mean_ci((kl.clamp_min(1e-9) / base.clamp_min(1e-9)).log().tolist()).exp()
    return {"mean_kl": float(kl.mean()), "ratio": ci.mean, "low": ci.low, "high": ci.high}


def markdown(paths: list[Path]) -> str:
    """Two tables per record: the per-block losses, and the three allocations on other replies."""
    out = []
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        out += [f"**{r['model']}** ({r['gain_rows']} replies of {r['gen_tokens']} greedy tokens for the losses, "
                f"{r['eval_rows']} others for the allocations; `{r['method']}` at density {r['density']:g}; "
                f"{r['seconds']:.0f} s on {r['threads']} threads). KL to dense per token with only block i at "
                f"{r['density']:g}, on greedy replies and in the prior's profile (temperature-1 samples), and "
                "the fraction each allocation keeps:", "",
                "| block | greedy replies | stored profile | kept: stored schedule | kept: greedy-loss schedule |",
                "|---:|---:|---:|---:|---:|"]
        for i, (g, p, a, b) in enumerate(zip(r["greedy_loss"], r["profile_loss"], r["stored_schedule"],
                                             r["greedy_schedule"])):
            out.append(f"| {i} | {g:.4f} | {p:.4f} | {a:.3f} | {b:.3f} |")
        out += ["", "| allocation | mean KL | KL / one density (geometric mean, 95% CI) |", "|---|---:|---:|"]
        for name, v in r["allocations"].items():
            out.append(f"| {name} | {v['mean_kl']:.4f} | {v['ratio']:.3f} [{v['low']:.3f}, {v['high']:.3f}] |")
        out.append("")
    return "\n".join(out).rstrip()


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--gain-rows", type=int, default=16)
    p.add_argument("--eval-rows", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    prior = get_or_build_prior(model, tok, args.model)
    cal, blocks = prior.calibration, find_ffn_blocks(model)
    n, d_ff = len(blocks), [b.d_ff for b in blocks]
    losses, gain_used = block_losses(model, tok, prior, args.gain_rows, args.prompt_tokens, args.gen_tokens)
    g = int((cal.grid - DENSITY).abs().argmin())
    greedy_profile = replace(cal, reply_loss=losses).reply_profile
    k_stored = allocate(cal.profile, cal.grid, d_ff, DENSITY)
    k_greedy = allocate(greedy_profile, cal.grid, d_ff, DENSITY)
    schedules = {"one density": tuple([DENSITY] * n),
                 "stored schedule": tuple(k / f for k, f in zip(k_stored, d_ff)),
                 "greedy-loss schedule": tuple(k / f for k, f in zip(k_greedy, d_ff))}
    prompts, mask, replies = self_written(model, tok, args.prompt_tokens, args.gen_tokens, args.eval_rows,
                                          offset=EVAL_OFFSET)
    configs = [GlassConfig(method="glass", density=d) for d in schedules.values()]
    kl = reply_kl(model, prompts, mask, replies, configs, prior)
    out = {"model": args.model, "method": "glass", "density": DENSITY, "gen_tokens": args.gen_tokens,
           "prompt_tokens": args.prompt_tokens, "gain_rows": gain_used,
           "eval_rows": int(replies.shape[0]), "greedy_loss": losses.tolist(), "profile_loss": cal.profile[:, g].tolist(),
           "stored_schedule": list(schedules["stored schedule"]),
           "greedy_schedule": list(schedules["greedy-loss schedule"]),
           "allocations": {name: _ratio(kl[c], kl[0]) for c, name in enumerate(schedules)},
           "seconds": time.perf_counter() - t0, "threads": args.threads,
           "command": f"python benchmarks/greedy_gain.py --model {args.model}"}
    atomic_write(record_path(args.model), json.dumps(out, indent=1) + "\n")
    print(markdown([record_path(args.model)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
