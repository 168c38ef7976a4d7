"""Can the model's own text choose ``glass``'s lam? KL per lam on self-written prompts and replies.

    python benchmarks/lam_self.py [--model smollm2-135m] [--prompt-tokens 8,32] [--rows 16] [--gen-tokens 64]

For each prompt length P, ``--rows`` sequences are written by the model itself: P tokens sampled
at temperature 1 after its own start (BOS, or an empty chat turn), then ``--gen-tokens`` tokens
decoded greedily. The sampled tokens play the prompt and the greedy ones the reply, the shape of
the fidelity protocol (a short prompt, the dense model's greedy continuation) with no evaluation
text at all. ``glass`` at density 0.5 with one fixed lam (``glass-fixed-lam``, the default ``--method``) is
teacher-forced on each reply at every lam of ``--lams``
(``teacher.continuation_logits``, the cached default prior); printed per P: the mean KL to the
dense model and the geometric mean of the per-row KL ratio against lam 0.5 (95% t interval).
The sequences are those of the prior's short-prompt lam check (``glass_llm.lam_choice``, which
runs this sweep at lams 0.5 and 0.25 and 32 rows): other sequences than the prior's and the rest of
its calibration's. Compare with the same sweep on the calibration split of a corpus
(``glass eval MODEL --split calib --methods dense,glass-fixed-lam --lam ...``).
"""

from __future__ import annotations

import argparse

import torch

from glass_llm import load_model
from glass_llm.engine import GlassConfig
from glass_llm.intervals import t_quantile
from glass_llm.lam_choice import self_written
from glass_llm.metrics import kl_per_token
from glass_llm.prior import load_prior
from glass_llm.prior_cache import find_cached_prior
from glass_llm.teacher import continuation_logits


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt-tokens", default="8,32")
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--lams", default="0.5,0.1,0.2,0.3,0.7")
    p.add_argument("--method", default="glass-fixed-lam")
    args = p.parse_args()
    torch.set_num_threads(2)
    model, tok = load_model(args.model)
    path = find_cached_prior(args.model)
    if path is None:
        raise SystemExit(f"no cached default prior: run `glass prior {args.model}` first")
    prior = load_prior(path)
    lams = [float(x) for x in args.lams.split(",")]
    for P in (int(x) for x in args.prompt_tokens.split(",")):
        prompts, mask, replies = self_written(model, tok, P, args.gen_tokens, args.rows)
        dense, _ = continuation_logits(model, prompts, replies, prompt_mask=mask)
        base = None
        for lam in lams:
            config = GlassConfig(method=args.method, density=0.5, lam=lam)
            logits, _ = continuation_logits(model, prompts, replies, config, prior, prompt_mask=mask)
            kl = torch.stack([kl_per_token(dense[i, 1:], logits[i, 1:]).mean() for i in range(len(replies))])
            base = kl if base is None else base
            ratio = (kl / base).log()
            half = t_quantile(0.975, len(kl) - 1) * ratio.std() / len(kl) ** 0.5
            print(f"{args.model} self-written P={P} G={args.gen_tokens} rows={len(kl)} {args.method} lam {lam:g}: "
                  f"KL {kl.mean():.3f}; vs lam {lams[0]:g}: {ratio.mean().exp():.3f} "
                  f"[{(ratio.mean() - half).exp():.3f}, {(ratio.mean() + half).exp():.3f}]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
