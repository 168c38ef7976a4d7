"""How far can re-selection from the past get? The static oracle against a causal one.

    python benchmarks/oracle_gap.py [--model smollm2-135m] [--prompt-tokens 8] [--gen-tokens 256] [--prompts 16]

Calibration split of Wikipedia, density 0.5, each method teacher-forced on the dense model's
greedy continuation. KL(dense || method) per generated position, averaged over the prompts
in four spans of the continuation, for:

* ``glass-schedule``, ``glass-refresh-cumulative`` and ``glass-refresh`` (the engine, with the cached
  default prior);
* ``causal oracle``: before every span of R = 16 generated tokens, the top half of every
  block's neurons by the *dense* model's statistic of the prompt and of the reference tokens
  before that span (uniform density, no prior). It is what re-selection every 16 tokens
  could at best choose from the past: no drift from the sparse decode, no prior to fuse.
  Each span is scored from a forward over the whole continuation with that span's sets
  (so earlier tokens' KV also come from those sets: an approximation of a refresh);
* ``static oracle``: one set per prompt from the statistic of the whole continuation,
  future tokens included (the ``oracle`` of ``glass eval``).

Writes ``benchmarks/results/oracle-gap-MODEL.json``.

With ``--informed`` it asks instead what each selection rule makes of more evidence: every rule
of ``INFORMED`` chooses one set per prompt with the prompt plus the first K tokens of the
dense reply (K = 64, and the whole reply) taken as its prompt, and that set scores the reply
from its first position. ``griffin`` given the whole reply is the static oracle but for the
prompt's few tokens in its statistic. Writes ``benchmarks/results/oracle-gap-informed-MODEL.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from calib_case import load_calib_case
from glass_llm.adapters import find_ffn_blocks
from glass_llm.calibrate import ActivationRecorder
from glass_llm.engine import GlassConfig, apply_glass
from glass_llm.io import atomic_write
from glass_llm.metrics import kl_per_token
from glass_llm.prior import prior_from_sums
from glass_llm.teacher import continuation_logits

HERE = Path(__file__).resolve().parent
METHODS = ("glass-schedule", "glass-refresh-cumulative", "glass-refresh")
SPAN = 16  # the causal oracle re-selects every SPAN generated tokens, as glass-refresh does
# --informed: rules without refresh, from prompt only to glass-schedule (with and without its pieces)
INFORMED = ("griffin", "glass-a", "glass-adaptive", "glass-schedule", "glass-schedule-adaptive")


def spans(gen_tokens: int) -> list[tuple[int, int]]:
    """Position ranges [lo, hi) of the scored continuation (position 0, the prefill's, is not)."""
    edges = [e for e in (1, 16, 64, 128) if e < gen_tokens] + [gen_tokens]
    return list(zip(edges, edges[1:]))


def row_sums(model, ids: torch.Tensor, lo: int, hi: int) -> list[torch.Tensor]:
    """Per-row, per-block activation sums of the dense model over positions [lo, hi) of ``ids``."""
    mask = torch.zeros_like(ids)
    mask[:, lo:hi] = 1
    rec = ActivationRecorder(model)
    rec.per_row = True
    with rec:
        rec.run(model, ids, mask, attention_mask=torch.ones_like(ids), logits_to_keep=1)
    return rec.take_row_sums()


def fixed_set_logits(model, blocks, prompt, ref, sums, n_tokens):
    """Continuation logits with every block keeping the top half by ``sums`` (one row)."""
    prior = prior_from_sums(model, sums, n_tokens, {"kind": "oracle"}, blocks)
    return continuation_logits(model, prompt, ref, GlassConfig(method="global", density=0.5), prior)[0][0]


@torch.no_grad()
def informed_sets(model, config: GlassConfig, ids: torch.Tensor) -> list[torch.Tensor]:
    """The sets (one row per row of ``ids``) that ``config``'s rule chooses with ``ids`` as its prompt."""
    with apply_glass(model, config) as handle:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
        return handle.selections


def set_logits(model, blocks, prompt, ref, sets: list[torch.Tensor]):
    """Continuation logits of one row with block ``i`` keeping exactly the neurons ``sets[i]`` (k,)."""
    marks = [torch.zeros(b.d_ff).index_fill_(0, s.cpu(), 1.0) for s, b in zip(sets, blocks)]
    prior = prior_from_sums(model, marks, 1, {"kind": "informed"}, blocks)
    density = tuple(s.numel() / b.d_ff for s, b in zip(sets, blocks))
    return continuation_logits(model, prompt, ref, GlassConfig(method="global", density=density), prior)[0][0]


def informed(args, case, blocks) -> int:
    model, prior, prompts, refs, dense = case.model, case.prior, case.prompts, case.refs, case.dense
    N, G = len(prompts), refs.shape[1]
    rows = []
    for method in INFORMED:
        for K in sorted({min(64, G), G}):
            sets = informed_sets(model, GlassConfig(method=method, density=0.5, prior=prior),
                                 torch.cat([prompts, refs[:, :K]], dim=1))
            kl = torch.stack([kl_per_token(dense[r, 1:], set_logits(model, blocks, prompts[r:r + 1], refs[r:r + 1],
                                                                    [s[min(r, len(s) - 1)] for s in sets])[1:])
                              for r in range(N)])
            per_prompt = kl.mean(1)
            rows.append({"method": method, "reply_tokens_seen": K, "kl": float(per_prompt.mean()),
                         "kl_se": float(per_prompt.std() / N ** 0.5),
                         "per_prompt": [round(float(x), 5) for x in per_prompt]})
            print(f"{method:24s} prompt + {K:3d} reply tokens: KL {rows[-1]['kl']:.3f} +- {rows[-1]['kl_se']:.3f}",
                  flush=True)
    out = HERE / "results" / f"oracle-gap-informed-{args.model}.json"
    command = (f"python benchmarks/oracle_gap.py --informed --model {args.model} --prompt-tokens {args.prompt_tokens} "
               f"--gen-tokens {G} --prompts {N} --threads {args.threads}")
    atomic_write(out, json.dumps({"model": args.model, "command": command, "prompt_tokens": args.prompt_tokens,
                                  "gen_tokens": G, "prompts": N, "split": "calib", "corpus": "wikipedia",
                                  "density": 0.5, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--informed", action="store_true", help="score each rule given part of the reply instead")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    P, G, N = args.prompt_tokens, args.gen_tokens, args.prompts
    case = load_calib_case(args.model, "wikipedia", P, G, N)
    model, prior, prompts, refs, dense = case.model, case.prior, case.prompts, case.refs, case.dense
    blocks = find_ffn_blocks(model)
    if args.informed:
        return informed(args, case, blocks)
    ids = torch.cat([prompts, refs[:, :-1]], dim=1)  # every token a sparse FFN processes
    kls: dict[str, torch.Tensor] = {}
    for method in METHODS:
        logits, _ = continuation_logits(model, prompts, refs, GlassConfig(method=method, density=0.5), prior)
        kls[method] = torch.stack([kl_per_token(dense[i, 1:], logits[i, 1:]) for i in range(N)])
        print(f"{method}: {kls[method].mean():.3f}", flush=True)
    causal = torch.zeros(N, G - 1)
    for lo in range(1, G, SPAN):  # positions [lo, hi) predicted from inputs up to P + hi - 1
        hi = min(G, lo + SPAN)
        sums = row_sums(model, ids, 0, P + lo - 1)  # prompt + the generated tokens fed before the span
        for r in range(N):
            logits = fixed_set_logits(model, blocks, prompts[r:r + 1], refs[r:r + 1], [s[r] for s in sums], P + lo - 1)
            causal[r, lo - 1:hi - 1] = kl_per_token(dense[r, lo:hi], logits[lo:hi])
    kls["causal oracle"] = causal
    print(f"causal oracle: {causal.mean():.3f}", flush=True)
    sums = row_sums(model, ids, P, ids.shape[1])
    static = torch.zeros(N, G - 1)
    for r in range(N):
        logits = fixed_set_logits(model, blocks, prompts[r:r + 1], refs[r:r + 1], [s[r] for s in sums], G - 1)
        static[r] = kl_per_token(dense[r, 1:], logits[1:])
    kls["static oracle"] = static
    rows = []
    for name, kl in kls.items():
        per_prompt = kl.mean(1)
        row = {"method": name, "kl": float(per_prompt.mean()),
               "kl_se": float(per_prompt.std() / N ** 0.5),
               "spans": {f"{a}-{b}": float(kl[:, a - 1:b - 1].mean()) for a, b in spans(G)},
               "per_prompt": [round(float(x), 5) for x in per_prompt]}
        rows.append(row)
        print(f"{name:26s} KL {row['kl']:.3f} +- {row['kl_se']:.3f} | "
              + " ".join(f"[{k}) {v:.3f}" for k, v in row["spans"].items()), flush=True)
    out = HERE / "results" / f"oracle-gap-{args.model}.json"
    command = (f"python benchmarks/oracle_gap.py --model {args.model} --prompt-tokens {P} --gen-tokens {G} "
               f"--prompts {N} --threads {args.threads}")
    atomic_write(out, json.dumps({"model": args.model, "command": command, "prompt_tokens": P, "gen_tokens": G,
                                  "prompts": N, "split": "calib", "corpus": "wikipedia", "density": 0.5,
                                  "span": SPAN, "seconds": round(time.time() - t0), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
