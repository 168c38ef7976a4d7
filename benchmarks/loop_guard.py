"""The loop guard: how many greedy replies collapse, and what its dense steps cost in speed.

    python benchmarks/loop_guard.py [--model smollm2-135m] [--variants glass@0.5:0,glass@0.5:4,glass@0.7:0]

The sixteen chat prompts of ``benchmarks/demo_text.py``, one at a time (batch 1: with a batch,
a step runs dense when any row's guard asks for it), greedy, 128 new tokens. For every prompt
the dense model and then each variant, ``METHOD@DENSITY:K`` with ``loop_guard=K`` (0: off),
write their reply back to back, so the timings of one prompt share the machine's state. Per reply: the
repetition figures of ``demo_text.py`` (repeat4, collapsed), the decode steps the guard ran
dense, and the wall time of the whole ``generate`` call (prefill, selection and every step).
The speed-up over dense is the ratio of the mean reply times, paired over the prompts, with its
95% interval (``glass_llm.intervals.paired_ratio``). Writes
``benchmarks/results/loop-guard-MODEL.json``; ``markdown`` renders it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from glass_llm.build import get_or_build_prior
from glass_llm.engine import GlassConfig, apply_glass
from glass_llm.intervals import paired_ratio
from glass_llm.io import atomic_write
from glass_llm.metrics import LOOP_SHARE
from glass_llm.models import load_model


def _reply(model, tok, enc, gen, config=None, prior=None) -> dict:
    from demo_text import figures

    handle = None if config is None else apply_glass(model, config, prior=prior)
    try:
        t0 = time.perf_counter()
        out = model.generate(**enc, **gen)
        seconds = time.perf_counter() - t0
        guard = None if handle is None else handle.guard
        dense_steps = 0 if guard is None else guard.dense_steps
    finally:
        if handle is not None:
            handle.remove()
    ids = out[0, enc["input_ids"].shape[1]:].tolist()
    return {"text": tok.decode(ids, skip_special_tokens=True), **figures(ids), "seconds": seconds,
            "guard_dense_steps": dense_steps, "steps": len(ids) - 1}


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--variants", default="glass@0.5:0,glass@0.5:2,glass@0.5:4,glass@0.7:0",
                    help="METHOD@DENSITY:K, comma-separated (K: loop_guard, 0 off)")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from demo_text import PROMPTS  # a sibling script: benchmarks/ is on the path when this one runs

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    prior = get_or_build_prior(model, tok, args.model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen = dict(max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, do_sample=False, pad_token_id=pad,
               temperature=None, top_p=None, top_k=None)
    variants = []
    for v in args.variants.split(","):
        m, rest = v.split("@")
        d, k = rest.split(":")
        variants.append((m, float(d), int(k)))
    runs = {("dense", 1.0, 0): []} | {v: [] for v in variants}
    t0 = time.perf_counter()
    for p in PROMPTS:
        if getattr(tok, "chat_template", None):
            enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
        else:
            enc = tok(p, return_tensors="pt")
        runs[("dense", 1.0, 0)].append({"prompt": p, **_reply(model, tok, enc, gen)})
        for m, d, k in variants:
            cfg = GlassConfig(method=m, density=d, loop_guard=k)
            runs[(m, d, k)].append({"prompt": p, **_reply(model, tok, enc, gen, cfg, prior)})
        print(f"{len(runs[('dense', 1.0, 0)])}/{len(PROMPTS)} prompts", flush=True)
    record = {"model": args.model, "gen_tokens": args.gen_tokens, "prompts": PROMPTS,
              "collapse_threshold": LOOP_SHARE, "threads": torch.get_num_threads(),
              "seconds": time.perf_counter() - t0,
              "runs": [{"method": m, "density": d, "loop_guard": k, "replies": r} for (m, d, k), r in runs.items()]}
    path = Path(args.out or Path(__file__).parent / "results" / f"loop-guard-{args.model}.json")
    atomic_write(path, json.dumps(record, indent=1) + "\n")
    print(markdown(path))
    return 0


def sign_test(fewer: int, more: int) -> float:
    """Two-sided exact sign test (McNemar's on the discordant prompts): the chance of a split at
    least this uneven when either side is equally likely."""
    n = fewer + more
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(fewer, more) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _against_off(run: dict, runs: list[dict]) -> str:
    """Prompts that collapse without the guard and not with it, and the reverse (same method and density)."""
    off = next((r for r in runs if r["method"] == run["method"] and r["density"] == run["density"]
                and r["loop_guard"] == 0), None)
    if off is None or off is run:
        return "–"
    pairs = list(zip((r["collapsed"] for r in off["replies"]), (r["collapsed"] for r in run["replies"])))
    fewer, more = sum(a and not b for a, b in pairs), sum(b and not a for a, b in pairs)
    return f"{fewer} / {more} (p = {sign_test(fewer, more):.3f})"


def markdown(path: Path) -> str:
    """Per method and guard setting: collapsed replies, mean repeat4, the share of decode steps
    the guard ran dense, and the speed-up over dense; then the first prompt's replies."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    dense = doc["runs"][0]["replies"]
    lines = [f"`{doc['model']}`, {len(doc['prompts'])} chat prompts one at a time, "
             f"greedy, {doc['gen_tokens']} new tokens, {doc['threads']} threads. collapsed: replies whose second "
             f"half has repeat4 >= {doc['collapse_threshold']:g}; dense steps: the share of decode steps the guard "
             "ran dense; speed-up: the dense model's mean reply time over the method's (whole `generate` call), "
             "paired over the prompts, 95% interval; against off: prompts whose reply collapses without the guard "
             "(same method and density) and not with it / the reverse, with the exact sign test's two-sided p.", "",
             "| method | density | loop_guard | collapsed | against off | repeat4 | dense steps | speed-up over dense |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for run in doc["runs"]:
        reps = run["replies"]
        share = sum(r["guard_dense_steps"] for r in reps) / sum(r["steps"] for r in reps)
        if run["method"] == "dense":
            speed = "1"
        else:
            ci = paired_ratio([r["seconds"] for r in dense], [r["seconds"] for r in reps])
            speed = f"{ci.mean:.2f} [{ci.low:.2f}, {ci.high:.2f}]"
        cells = [run["method"], f"{run['density']:g}", str(run["loop_guard"]) if run["method"] != "dense" else "–",
                 f"{sum(r['collapsed'] for r in reps)}/{len(reps)}", _against_off(run, doc["runs"]),
                 f"{sum(r['repeat4'] for r in reps) / len(reps):.2f}",
                 f"{share:.2f}" if run["method"] != "dense" else "–", speed]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"The first prompt ({doc['prompts'][0]!r}): the start of each reply.", "",
              "| method | density | loop_guard | reply (first 200 characters) |", "|---|---:|---:|---|"]
    for run in doc["runs"]:
        text = " ".join(run["replies"][0]["text"].split())[:200].replace("|", "\\|")
        guard = run["loop_guard"] if run["method"] != "dense" else "–"
        lines.append(f"| {run['method']} | {run['density']:g} | {guard} | {text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
