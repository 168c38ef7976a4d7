"""Choose the refresh interval R on the calibration split (never the reported test split).

    python benchmarks/refresh_sweep.py --corpus wikipedia [--prompt-tokens 8] [--gen-tokens 128] [--prompts 16]

SmolLM2-135M (or ``--model``), density 0.5, the cached default prior: mean KL(dense || method) over the
prompts for griffin, global, glass-a (R = 0, 16) and glass-schedule-adaptive (R = 0, 4, 8, 16,
32, 64; the default ``glass`` when R was chosen), each
teacher-forced on the dense model's greedy continuation (``teacher.continuation_logits``,
which refreshes at the same points as generation). Prints one line per setting, with the
geometric mean of the per-prompt KL ratio against the first setting (95% t interval).
With ``--growth``: glass-schedule without refresh, glass-refresh (R = 16, 32) and growing intervals
(R = 16 and 8, each interval twice the one before). With ``--halflife``: glass-refresh with every
token weighted the same (the ratios' base) and with half-lives of 16, 32 and 64 tokens.
With ``--dense-start``: glass-schedule (the base) and glass-schedule whose first W = 8, 16, 32, 48 generated
tokens run dense before it selects, at the density that keeps the FFN work of the whole
reply equal to glass-schedule's (``config.equal_work_density``), then glass-refresh without and with a
dense start of 16 at that density. Also prints the mean KL over four spans of the reply.
With ``--fade``: glass-refresh (the base) and glass-refresh whose re-selections move the per-layer
schedule toward one density for all, halfway every 64, 128, 256 generated tokens
(``schedule_halflife``), then glass-refresh with a dense start of 16 without and with the fade of 64
(at the equal-work density); also with the span means.
With ``--comp-tokens``: glass-refresh-start-fade-comp at density 0.5 (the base: the prior's mean added back)
and with a compensation mean that follows the reply, the prior's mean counting as N = 4, 16, 64 tokens
(``comp_tokens``); also with the span means.
With ``--interval``: glass-refresh-start-fade-comp-running at density 0.5 re-selecting every R = 16 (the
base, its default), 8 and 4 generated tokens; also with the span means.
"""

from __future__ import annotations

import argparse

import torch

from calib_case import load_calib_case
from glass_llm.config import equal_work_density, refresh_interval
from glass_llm.engine import GlassConfig
from glass_llm.intervals import t_quantile
from glass_llm.metrics import kl_per_token
from glass_llm.teacher import continuation_logits

# (method, R, growth, half-life[, dense start[, schedule half-life]]); the first of each list is the base of the ratios
SETTINGS = [("griffin", 0, 1, 0), ("global", 0, 1, 0), ("glass-a", 0, 1, 0), ("glass-a", 16, 1, 0),
            *(("glass-schedule-adaptive", r, 1, 0) for r in (0, 4, 8, 16, 32, 64))]
# --growth: fewer, growing intervals against glass-refresh's 16
GROWTH = [("glass-schedule", 0, 1, 0), ("glass-refresh", 16, 1, 0), ("glass-refresh", 32, 1, 0),
          ("glass-refresh", 16, 2, 0), ("glass-refresh", 8, 2, 0)]
# --halflife: recent tokens weighing more in each re-selection
HALFLIFE = [("glass-refresh", 16, 1, 0), *(("glass-refresh", 16, 1, h) for h in (16, 32, 64))]
# --dense-start: the first W generated tokens dense, the rest sparser, the same FFN work in all
DENSE_START = [("glass-schedule", 0, 1, 0, 0), *(("glass-schedule", 0, 1, 0, w) for w in (8, 16, 32, 48)),
               ("glass-refresh", 16, 1, 16, 0), ("glass-refresh", 16, 1, 16, 16)]
# --fade: re-selections that move the per-layer schedule toward one density as the reply grows
FADE = [("glass-refresh", 16, 1, 16, 0, 0), *(("glass-refresh", 16, 1, 16, 0, h) for h in (64, 128, 256)),
        ("glass-refresh", 16, 1, 16, 16, 0), ("glass-refresh", 16, 1, 16, 16, 64)]
# --comp-tokens: a compensation mean that follows the reply (at density 0.5, as the fidelity records run it)
COMP_TOKENS = [("glass-refresh-start-fade-comp", 16, 1, 16, 16, 64, n) for n in (0, 4, 16, 64)]
# --interval: the running compensation mean's selection re-selecting more often
INTERVAL = [("glass-refresh-start-fade-comp-running", r, 1, 16, 16, 64, 16) for r in (16, 8, 4)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="wikipedia")
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--growth", action="store_true", help="compare growing refresh intervals instead")
    p.add_argument("--halflife", action="store_true", help="compare recency half-lives instead")
    p.add_argument("--dense-start", action="store_true", help="compare dense starts at equal FFN work instead")
    p.add_argument("--fade", action="store_true", help="compare schedule half-lives of glass-refresh instead")
    p.add_argument("--comp-tokens", action="store_true", help="compare compensation means that follow the reply")
    p.add_argument("--interval", action="store_true", help="compare refresh intervals of the running-mean method")
    args = p.parse_args()
    case = load_calib_case(args.model, args.corpus, args.prompt_tokens, args.gen_tokens, args.prompts)
    model, prior, prompts, refs, dense = case.model, case.prior, case.prompts, case.refs, case.dense
    base = None
    at_half = args.comp_tokens or args.interval  # density 0.5 as the fidelity records run these
    grid = (INTERVAL if args.interval else COMP_TOKENS if args.comp_tokens else FADE if args.fade else DENSE_START if args.dense_start else HALFLIFE if args.halflife else GROWTH if args.growth
            else SETTINGS)
    for method, R, growth, halflife, *extra in grid:
        W, fade, comp = (extra + [0, 0, None])[:3]
        density = 0.5 if at_half else equal_work_density(0.5, W, args.gen_tokens)
        config = GlassConfig(method=method, density=density, refresh=R, refresh_growth=growth,
                             refresh_halflife=halflife, dense_start=W, schedule_halflife=fade, comp_tokens=comp)
        logits, _ = continuation_logits(model, prompts, refs, config, prior)
        per_token = torch.stack([kl_per_token(dense[i, 1:], logits[i, 1:]) for i in range(len(prompts))])
        kl = per_token.mean(1)
        base = kl if base is None else base
        ratio = (kl / base).log()
        half = t_quantile(0.975, len(kl) - 1) * ratio.std() / len(kl) ** 0.5
        n_ref = sum(1 for _ in _refresh_points(R, growth, args.gen_tokens))
        print(f"{args.model} {args.corpus} P={args.prompt_tokens} G={args.gen_tokens} {method:8s} R={R:3d} growth {growth:g} "
              f"half-life {halflife:g} ({n_ref} refreshes){_start_note(W, density)}"
              f"{f' schedule half-life {fade:g}' if fade else ''}{'' if comp is None else f' comp_tokens {comp:g}'} KL {kl.mean():.3f} +- {kl.std() / len(kl) ** 0.5:.3f} "
              f"(s.e.); vs the first setting: geometric mean ratio "
              f"{ratio.mean().exp():.3f} [{(ratio.mean() - half).exp():.3f}, {(ratio.mean() + half).exp():.3f}]",
              flush=True)
        if args.dense_start or args.fade or at_half:
            edges = [e for e in (0, 16, 64, 128) if e < args.gen_tokens - 1] + [args.gen_tokens - 1]
            print("    mean KL at positions " + ", ".join(f"{a + 1}-{b}: {per_token[:, a:b].mean():.3f}"
                                                         for a, b in zip(edges, edges[1:])), flush=True)
    return 0


def _start_note(dense_start: int, density: float) -> str:
    return f" dense start {dense_start} at density {density:.4f}" if dense_start else ""


def _refresh_points(R: int, growth: float, gen_tokens: int):
    """The generated-token counts at which a decode of ``gen_tokens`` re-selects (the first
    token comes from the dense prefill, so ``gen_tokens - 1`` sparse steps)."""
    at, n = 0, 0
    while R:
        at += refresh_interval(R, growth, n)
        n += 1
        if at >= gen_tokens - 1:
            return
        yield at


if __name__ == "__main__":
    raise SystemExit(main())
