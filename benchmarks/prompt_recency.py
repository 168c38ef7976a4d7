"""Does the static ``glass`` gain from weighing the prompt's last tokens more (``prompt_halflife``)?

    python benchmarks/prompt_recency.py [MODEL] [P,P,...] [PROMPTS] [HALFLIVES]
    # default: gemma3-270m 8,16,32 23 2,4,8,16,32; at P = 64 the split has 22 prompts: MODEL 64 22

For each prompt length, prompts of Wikipedia's calibration split (never the reported test split;
G = 64, the dense model's greedy continuation) are teacher-forced at density 0.5 with the cached
default prior: ``glass`` with every prompt token weighing the same (its setting), ``glass`` whose
prompt tokens weigh ``0.5 ** (age / h)`` in the prompt's statistic (age in tokens before the
prompt's last one; the ranking and the choice of the nearest greedy replies both read it), and
``glass-a`` for scale. Printed: mean KL per token and the geometric mean of the per-prompt KL ratio
to ``glass`` with its 95% t interval. Its output is committed under benchmarks/results/.
"""
import sys
import time

import torch

from calib_case import load_calib_case
from glass_llm.engine import GlassConfig
from glass_llm.intervals import mean_ci
from glass_llm.metrics import kl_per_token
from glass_llm.teacher import continuation_logits


def per_prompt_kl(case, config: GlassConfig) -> torch.Tensor:
    """(N,) mean KL per token of each prompt's continuation after the first (dense) token."""
    logits, _ = continuation_logits(case.model, case.prompts, case.refs, config, case.prior)
    return kl_per_token(case.dense[:, 1:], logits[:, 1:]).mean(1)


def main() -> int:
    args = sys.argv[1:]
    model = args[0] if args else "gemma3-270m"
    lengths = [int(x) for x in (args[1] if len(args) > 1 else "8,16,32").split(",")]
    n = int(args[2]) if len(args) > 2 else 23
    halflives = [float(x) for x in (args[3] if len(args) > 3 else "2,4,8,16,32").split(",")]
    torch.set_num_threads(2)
    for P in lengths:
        t0 = time.time()
        case = load_calib_case(model, "wikipedia", P, 64, n)
        settings = [("glass", 0.0)] + [("glass", h) for h in halflives] + [("glass-a", 0.0)]
        kl = {s: per_prompt_kl(case, GlassConfig(method=s[0], density=0.5, prompt_halflife=s[1])) for s in settings}
        base = kl[settings[0]]
        print(f"{model} P={P} {len(base)} prompts, G=64, density 0.5 ({time.time() - t0:.0f} s)")
        for s in settings:
            ci = mean_ci((kl[s] / base).log().tolist()).exp()
            print(f"  {s[0]:>8} prompt_halflife {s[1]:>4g}  KL {kl[s].mean():.4f}  ratio {ci.mean:.3f} "
                  f"[{ci.low:.3f}, {ci.high:.3f}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
