"""Choose the refresh interval R on the calibration split (never the reported test split).

    python benchmarks/refresh_sweep.py --corpus wikipedia [--prompt-tokens 8] [--gen-tokens 128] [--prompts 16]

SmolLM2-135M, density 0.5, the cached default prior: mean KL(dense || method) over the
prompts for griffin, global, glass-a (R = 0, 16) and glass-schedule-adaptive (R = 0, 4, 8, 16,
32, 64; the default ``glass`` when R was chosen), each
teacher-forced on the dense model's greedy continuation (``teacher.continuation_logits``,
which refreshes at the same points as generation). Prints one line per setting.
"""

from __future__ import annotations

import argparse

import torch

from glass_llm import load_model
from glass_llm.corpora import load_texts
from glass_llm.engine import GlassConfig
from glass_llm.evaluation.plan import EvalSettings, plan_items
from glass_llm.evaluation.score import generate_references
from glass_llm.metrics import kl_per_token
from glass_llm.prior import load_prior
from glass_llm.prior_cache import find_cached_prior
from glass_llm.teacher import continuation_logits
from glass_llm.tokens import pad_id

SETTINGS = [("griffin", 0), ("global", 0), ("glass-a", 0), ("glass-a", 16),
            *(("glass-schedule-adaptive", r) for r in (0, 4, 8, 16, 32, 64))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="wikipedia")
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=16)
    args = p.parse_args()
    model, tok = load_model("smollm2-135m")
    path = find_cached_prior("smollm2-135m")
    if path is None:
        raise SystemExit("no cached default prior: run `glass prior smollm2-135m` first")
    prior = load_prior(path)
    settings = EvalSettings(model="smollm2-135m", corpus=args.corpus, prompt_tokens=(args.prompt_tokens,),
                            gen_tokens=args.gen_tokens, n_prompts=args.prompts, split="calib",
                            batch_size=args.prompts)
    prompts = torch.tensor(plan_items(settings, tok, load_texts(args.corpus))[0].prompts)
    refs = generate_references(model, prompts, args.gen_tokens, pad_id(tok))
    dense, _ = continuation_logits(model, prompts, refs)
    for method, R in SETTINGS:
        logits, _ = continuation_logits(model, prompts, refs, GlassConfig(method=method, density=0.5, refresh=R), prior)
        kl = torch.stack([kl_per_token(dense[i, 1:], logits[i, 1:]).mean() for i in range(len(prompts))])
        print(f"{args.corpus} P={args.prompt_tokens} G={args.gen_tokens} {method:8s} R={R:3d} "
              f"KL {kl.mean():.3f} +- {kl.std() / len(kl) ** 0.5:.3f} (s.e.)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
