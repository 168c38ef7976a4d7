"""How much could a lam chosen per prompt gain over the one lam of ``glass``? An upper bound.

    python benchmarks/lam_oracle.py [MODEL] [P,P,...] [PROMPTS] [LAMS]
    # default: gemma3-270m 8,32 23 0.2,0.3,0.4,0.5,0.6,0.7,0.8

For each prompt of Wikipedia's calibration split (never the reported test split; G = 64, the
dense model's greedy continuation), ``glass`` is teacher-forced at density 0.5 with the cached
default prior at each lam, and the lam with the least KL on that very prompt is taken: a choice
that knows the reply, so no rule that reads only the prompt can do better among these lams.
Printed: the mean KL of each lam, and of the per-prompt best, with the geometric mean of the
per-prompt KL ratio against ``glass`` at 0.5 (95% t interval), and how often each lam is the best.
Its output is committed under benchmarks/results/.
"""
import sys
import time
from collections import Counter

import torch

from calib_case import load_calib_case
from glass_llm.engine import GlassConfig
from glass_llm.intervals import mean_ci
from prompt_recency import per_prompt_kl


def main() -> int:
    args = sys.argv[1:]
    model = args[0] if args else "gemma3-270m"
    lengths = [int(x) for x in (args[1] if len(args) > 1 else "8,32").split(",")]
    n = int(args[2]) if len(args) > 2 else 23
    lams = [float(x) for x in (args[3] if len(args) > 3 else "0.2,0.3,0.4,0.5,0.6,0.7,0.8").split(",")]
    if 0.5 not in lams:
        raise SystemExit("the lams must include 0.5, glass's own, the base of the ratios")
    torch.set_num_threads(2)
    for P in lengths:
        t0 = time.time()
        case = load_calib_case(model, "wikipedia", P, 64, n)
        kl = torch.stack([per_prompt_kl(case, GlassConfig(method="glass", density=0.5, lam=lam)) for lam in lams])
        base = kl[lams.index(0.5)]
        best, which = kl.min(0)
        print(f"{model} P={P} {len(base)} prompts, G=64, density 0.5 ({time.time() - t0:.0f} s)")
        for name, v in [(f"lam {lam:g}", kl[i]) for i, lam in enumerate(lams)] + [("best lam per prompt", best)]:
            ci = mean_ci((v / base).log().tolist()).exp()
            print(f"  {name:>20}  KL {v.mean():.4f}  ratio {ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]", flush=True)
        counts = Counter(lams[i] for i in which.tolist())
        print("  best lam per prompt, prompts: " + ", ".join(f"{lam:g}: {counts[lam]}" for lam in lams), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
