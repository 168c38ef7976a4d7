"""How much does predicting the neurons left out from the kept ones (``glass-linear``) gain over adding
back their mean (``glass``), and how much of the covariance does it need?

    python benchmarks/linear_comp.py [MODEL] [P,P,...] [PROMPTS] [RIDGES] [RANKS]
    # default: gemma3-270m 8,32 23 0.25,0.5,1 64,256

Prompts of Wikipedia's calibration split (never the reported test split; G = 64, the dense model's
greedy continuation) are teacher-forced at density 0.5 with the cached default prior (its activation
covariance added if it has none, ``calibration.with_covariance``): ``glass`` (mean compensation),
``glass-linear`` at each ridge, ``glass-linear`` at the default ridge with the covariance cut to its
``r`` leading eigenvectors plus each neuron's remaining variance (a factor model that would be cheaper
to store and to solve), and ``glass-a`` for scale. Both methods choose the same neurons. Printed: mean
KL per token and the geometric mean of the per-prompt KL ratio to ``glass`` with its 95% t interval.
Its output is committed under benchmarks/results/.
"""
import sys
import time
from dataclasses import replace

import torch

from calib_case import load_calib_case
from glass_llm.covariance import with_covariance
from glass_llm.engine import GlassConfig
from glass_llm.intervals import mean_ci
from glass_llm.lincomp import DEFAULT_RIDGE
from prompt_recency import per_prompt_kl


def low_rank(cov: torch.Tensor, rank: int) -> torch.Tensor:
    """(L, d, d) covariances as ``U diag(v) U^T + diag(e)``: ``rank`` leading eigenvectors, and what
    they leave of each neuron's own variance."""
    out = []
    for c in cov.double():
        val, vec = torch.linalg.eigh(c)
        u, v = vec[:, -rank:], val[-rank:].clamp_min(0)
        approx = (u * v) @ u.T
        out.append((approx + torch.diag((c.diagonal() - approx.diagonal()).clamp_min(1e-12))).float())
    return torch.stack(out)


def main() -> int:
    args = sys.argv[1:]
    model = args[0] if args else "gemma3-270m"
    lengths = [int(x) for x in (args[1] if len(args) > 1 else "8,32").split(",")]
    n = int(args[2]) if len(args) > 2 else 23
    ridges = [float(x) for x in (args[3] if len(args) > 3 else "0.25,0.5,1").split(",")]
    ranks = [int(x) for x in (args[4] if len(args) > 4 else "64,256").split(",") if x]  # "": none
    torch.set_num_threads(2)
    approx: dict[int, torch.Tensor] = {}
    for P in lengths:
        t0 = time.time()
        case = load_calib_case(model, "wikipedia", P, 64, n)
        if case.prior.calibration.lin_cov is None:
            from glass_llm import load_model

            case.prior = with_covariance(case.model, load_model(model)[1], case.prior)
        cal = case.prior.calibration
        settings = [("glass", None, None)] + [("glass-linear", r, None) for r in ridges]
        settings += [("glass-linear", DEFAULT_RIDGE, k) for k in ranks] + [("glass-a", None, None)]
        kl = {}
        for method, ridge, rank in settings:
            prior = case.prior
            if rank is not None:
                approx.setdefault(rank, low_rank(cal.lin_cov, rank))
                prior = replace(prior, calibration=replace(cal, lin_cov=approx[rank]))
            kl[(method, ridge, rank)] = per_prompt_kl(replace(case, prior=prior),
                                                      GlassConfig(method=method, density=0.5, ridge=ridge))
        base = kl[settings[0]]
        print(f"{model} P={P} {len(base)} prompts, G=64, density 0.5, covariance of {cal.meta.get('lin_tokens')} "
              f"greedy tokens ({time.time() - t0:.0f} s)")
        for s in settings:
            ci = mean_ci((kl[s] / base).log().tolist()).exp()
            label = s[0] + ("" if s[1] is None else f" ridge {s[1]:g}") + ("" if s[2] is None else f" rank {s[2]}")
            print(f"  {label:>32}  KL {kl[s].mean():.4f}  ratio {ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
