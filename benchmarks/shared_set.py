"""What does one neuron set for a whole batch (``share_batch``, ``glass serve --share-batch``) cost
in fidelity, against a set per prompt?

    python benchmarks/shared_set.py [--model smollm2-135m] [--prompt-tokens 8] [--prompts 32]
        [--gen-tokens 64] [--batches 1,2,4,8,16,32] [--methods glass,glass-a] [--corpora wikipedia]

Prompts of the test split of each corpus (the plan of ``glass eval``; this chooses no setting, it
measures one; with several corpora, ``--prompts`` of each, taken in turn so that every batch of
two or more mixes the kinds of text, as a server's batch may) are teacher-forced along the dense model's greedy continuation at density 0.5 with
the cached default prior: each method once with a set per prompt, and once per batch size B with
the prompts taken B at a time in plan order, the B prompts sharing one set chosen from the sum of
their statistics (what the server does with ``--share-batch``). ``global`` (the prior alone, the
same set for every prompt) is scored for scale. Printed and written to
``benchmarks/results/shared-set-MODEL-pP[-CORPORA].json`` (the suffix for other corpora than
Wikipedia alone): the mean KL per token of each arm, and the ratio
of the mean KLs of the shared set to the set per prompt with its paired 95% interval (Fieller's).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from calib_case import CalibCase, load_calib_case
from glass_llm.engine import GlassConfig
from glass_llm.intervals import paired_ratio
from glass_llm.metrics import kl_per_token
from glass_llm.teacher import continuation_logits

RESULTS = Path(__file__).resolve().parent / "results"


def batched_kl(case, config: GlassConfig, batch: int) -> torch.Tensor:
    """(N,) mean KL per token of each prompt, the prompts run ``batch`` at a time."""
    out = []
    for lo in range(0, len(case.prompts), batch):
        sl = slice(lo, lo + batch)
        logits, _ = continuation_logits(case.model, case.prompts[sl], case.refs[sl], config, case.prior)
        out.append(kl_per_token(case.dense[sl, 1:], logits[:, 1:]).mean(1))
    return torch.cat(out)


def mixed_case(model: str, corpora: list[str], prompt_tokens: int, gen_tokens: int, n: int) -> CalibCase:
    """The test-split cases of ``corpora``, their prompts interleaved one corpus after another."""
    cases = [load_calib_case(model, c, prompt_tokens, gen_tokens, n, split="test") for c in corpora]
    if len(cases) == 1:
        return cases[0]

    def weave(field: str) -> torch.Tensor:
        return torch.stack([getattr(c, field) for c in cases], 1).flatten(0, 1)

    return replace(cases[0], prompts=weave("prompts"), refs=weave("refs"), dense=weave("dense"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--methods", default="glass,glass-a")
    ap.add_argument("--corpora", default="wikipedia", help="comma-separated; several are interleaved")
    args = ap.parse_args()
    corpora = args.corpora.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    total = args.prompts * len(corpora)
    if any(total % b for b in batches):
        raise SystemExit(f"every batch size must divide the number of prompts ({total}), got {batches}")
    torch.set_num_threads(2)
    t0 = time.time()
    case = mixed_case(args.model, corpora, args.prompt_tokens, args.gen_tokens, args.prompts)
    n = len(case.prompts)
    print(f"{args.model} {'+'.join(corpora)} P={args.prompt_tokens} {n} prompts, G={args.gen_tokens}, "
          "density 0.5", flush=True)
    record = {"model": args.model, "corpus": "+".join(corpora), "split": "test", "prompt_tokens": args.prompt_tokens,
              "prompts": n, "gen_tokens": args.gen_tokens, "density": 0.5, "methods": {}}
    glob = batched_kl(case, GlassConfig(method="global", density=0.5), n)
    record["methods"]["global"] = {"kl": glob.tolist()}
    print(f"  {'global':>8}  KL {glob.mean():.4f}", flush=True)
    for method in args.methods.split(","):
        config = GlassConfig(method=method, density=0.5)
        own = batched_kl(case, config, 1)
        entry = {"own": own.tolist(), "shared": {}}
        print(f"  {method:>8}  set per prompt  KL {own.mean():.4f}", flush=True)
        for b in batches:
            shared = batched_kl(case, replace(config, share_batch=True), b)
            ci = paired_ratio(shared.tolist(), own.tolist())
            entry["shared"][str(b)] = {"kl": shared.tolist(), "ratio": [ci.mean, ci.low, ci.high]}
            print(f"  {method:>8}  one set per {b:>2}  KL {shared.mean():.4f}  / own {ci.mean:.3f} "
                  f"[{ci.low:.3f}, {ci.high:.3f}]", flush=True)
        ci = paired_ratio(glob.tolist(), own.tolist())
        entry["global_ratio"] = [ci.mean, ci.low, ci.high]
        record["methods"][method] = entry
    record["seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if corpora == ["wikipedia"] else "-" + "-".join(corpora)
    out = RESULTS / f"shared-set-{args.model}-p{args.prompt_tokens}{suffix}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    print(f"wrote {out} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
