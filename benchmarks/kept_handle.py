"""What a server gains by keeping its GLASS handle between batches (``serve.decode.KeptGlass``).

    flock /tmp/glass-heavy.lock python benchmarks/kept_handle.py [--model smollm2-135m] [--rounds 12]

One process, two copies of the model (one handle per model at a time), the server's own batch
function (``run_batch``), one request per batch (greedy, ``--max-tokens`` new tokens, a different
prompt each round). Each round runs the request on both copies in alternating order: on one
through a kept handle (applied once, before the first round), on the other with a handle applied
for the request and removed after it, as every batch did before. Reports the
wall time per request of each arm (median), the paired difference and ratio with their Student-t
/ Fieller intervals, the selection time the engine measured in each arm, and the minor page faults
per request; writes ``benchmarks/results/kept-handle-MODEL.json``.

It then does the same for the lm-evaluation-harness backend's multiple-choice scoring
(``GlassLM._score_group``: one context, four 8-token continuations), one handle for 8 contexts
against a handle per context, alternating, ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from glass_llm.build import get_or_build_prior
from glass_llm.engine import GlassConfig
from glass_llm.intervals import paired_diff, paired_ratio
from glass_llm.io import atomic_write
from glass_llm.models import load_model
from glass_llm.serve.decode import KeptGlass, Row, run_batch
from glass_llm.serve.protocol import Sampling

PROMPTS = ["The history of the printing press begins", "Photosynthesis is the process by which",
           "The river Thames flows through London and", "A violin maker chooses the wood for",
           "The first computers filled whole rooms because", "In the mountains the weather can change"]


def _request(model, tok, prompt: str, config: GlassConfig, prior, max_tokens: int, kept) -> tuple[float, int, float]:
    """Seconds, minor page faults and the engine's selection seconds of one request."""
    row = Row(index=0, max_tokens=max_tokens, stop=(), emit=lambda event: None, cancelled=lambda: False)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    run_batch(model, tok, [tok(prompt)["input_ids"]], [row], Sampling(0.0, 1.0, None), config, prior=prior, kept=kept)
    seconds = time.perf_counter() - t0
    select_s = kept.handle.select_s if kept is not None else float("nan")
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, select_s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="glass")
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    other, _ = load_model(args.model)
    prior = get_or_build_prior(model, tok, args.model)
    config = GlassConfig(method=args.method, density=args.density)
    kept = KeptGlass(model, prior)
    _request(model, tok, PROMPTS[0], config, prior, args.max_tokens, kept)  # warm-up: the kept handle's buffers
    _request(other, tok, PROMPTS[0], config, prior, args.max_tokens, None)
    arms = {"kept": [], "fresh": []}
    faults = {"kept": [], "fresh": []}
    select = []
    for r in range(args.rounds):
        prompt = PROMPTS[r % len(PROMPTS)]
        for arm in (("kept", "fresh") if r % 2 == 0 else ("fresh", "kept")):
            s, f, sel = (_request(model, tok, prompt, config, prior, args.max_tokens, kept) if arm == "kept" else
                         _request(other, tok, prompt, config, prior, args.max_tokens, None))
            arms[arm].append(s)
            faults[arm].append(f)
            if arm == "kept":
                select.append(sel)
    kept.close()
    harness = _harness(model, tok, prior, config, args.rounds)
    diff = paired_diff(arms["fresh"], arms["kept"])
    ratio = paired_ratio(arms["kept"], arms["fresh"])
    out = {
        "model": args.model, "method": args.method, "density": args.density, "rounds": args.rounds,
        "max_tokens": args.max_tokens, "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "kept_s": arms["kept"], "fresh_s": arms["fresh"],
        "kept_median_ms": 1e3 * statistics.median(arms["kept"]), "fresh_median_ms": 1e3 * statistics.median(arms["fresh"]),
        "saved_ms": {"mean": 1e3 * diff.mean, "low": 1e3 * diff.low, "high": 1e3 * diff.high, "n": diff.n},
        "ratio_kept_to_fresh": asdict(ratio),
        "kept_select_ms_median": 1e3 * statistics.median(select),
        "minor_faults_median": {k: statistics.median(v) for k, v in faults.items()},
        "harness": harness,
    }
    path = Path(__file__).resolve().parent / "results" / f"kept-handle-{args.model}.json"
    atomic_write(path, json.dumps(out, indent=1) + "\n")
    print(f"{args.model} {args.method} d={args.density}: request {out['kept_median_ms']:.0f} ms kept, "
          f"{out['fresh_median_ms']:.0f} ms fresh (medians of {args.rounds}); fresh - kept "
          f"{1e3 * diff.mean:.1f} ms [{1e3 * diff.low:.1f}, {1e3 * diff.high:.1f}]; kept / fresh {ratio.mean:.3f} "
          f"[{ratio.low:.3f}, {ratio.high:.3f}]; minor faults {out['minor_faults_median']} -> {path}")
    print(f"harness: {harness['kept_ms_per_context']:.0f} ms a context with one handle, "
          f"{harness['fresh_ms_per_context']:.0f} ms with one per context; kept / fresh {harness['ratio']['mean']:.3f} "
          f"[{harness['ratio']['low']:.3f}, {harness['ratio']['high']:.3f}]")
    return 0


def _harness(model, tok, prior, config: GlassConfig, rounds: int, contexts: int = 8) -> dict:
    """Seconds per context of ``GlassLM._score_group``, one handle for ``contexts`` contexts against one per
    context, alternating per round; the ratio of the round totals with its Fieller interval."""
    from glass_llm.engine import apply_glass
    from glass_llm.lmeval import GlassLM

    lm = GlassLM(pretrained=model, tokenizer=tok, prior=prior, device="cpu", method=config.method,
                 density=config.density)
    groups = [(tok(p)["input_ids"], [tok(f" {w} and the rest of it is")["input_ids"] for w in ("one", "two", "red", "old")])
              for p in PROMPTS]
    groups = [groups[i % len(groups)] for i in range(contexts)]
    arms = {"kept": [], "fresh": []}

    def kept_arm():
        with apply_glass(model, config, prior=prior):
            for ctx, conts in groups:
                lm._score_group(ctx, conts)

    def fresh_arm():
        for ctx, conts in groups:
            with apply_glass(model, config, prior=prior):
                lm._score_group(ctx, conts)

    with torch.no_grad():
        kept_arm(), fresh_arm()  # warm-up
        for r in range(rounds):
            for arm in (("kept", "fresh") if r % 2 == 0 else ("fresh", "kept")):
                t0 = time.perf_counter()
                (kept_arm if arm == "kept" else fresh_arm)()
                arms[arm].append(time.perf_counter() - t0)
    ratio = paired_ratio(arms["kept"], arms["fresh"])
    return {"contexts_per_round": contexts, "continuations": 4, "kept_s": arms["kept"], "fresh_s": arms["fresh"],
            "kept_ms_per_context": 1e3 * statistics.median(arms["kept"]) / contexts,
            "fresh_ms_per_context": 1e3 * statistics.median(arms["fresh"]) / contexts, "ratio": asdict(ratio)}


if __name__ == "__main__":
    raise SystemExit(main())
