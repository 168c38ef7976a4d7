"""What huge pages for the compact weights buy (memory.py): ``glass bench`` with PyTorch's CPU allocator
on huge pages (``THP_MEM_ALLOC_ENABLE=1``, what importing glass_llm sets) and on 4 KB pages (``=0``).

    flock /tmp/glass-heavy.lock python benchmarks/huge_pages.py [--model smollm2-135m] [--rounds 6]

The variable is read once per process, so each arm is its own ``glass bench --json`` process; the
two arms alternate (on, off, then off, on, ...), one pair per round. Each run times its method's
selection and decode against dense decode in its own interleaved rounds. Reports per arm the median
selection time and its ratio (on / off, Fieller interval over the rounds), the selection in dense decode
steps, the decode and end-to-end speed-ups and the peak resident memory; writes
``benchmarks/results/huge-pages-MODEL-gG.json`` (G the new tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from glass_llm.intervals import paired_ratio
from glass_llm.io import atomic_write

FIELDS = ("select_ms", "select_in_decode_steps", "speedup", "e2e_speedup", "dense_tok_s", "peak_rss_mb")


def _bench(args, on: bool) -> dict:
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if on else "0")
    cmd = [sys.executable, "-m", "glass_llm", "bench", args.model, "--method", args.method, "--density",
           str(args.density), "--prompt-tokens", "16", "--gen-tokens", str(args.gen_tokens), "--repeats", "3",
           "--threads", str(args.threads), "--json", "--quiet"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    record = json.loads(out.stdout)
    record = record[0] if isinstance(record, list) else record
    return {"huge_pages": record["machine"]["huge_pages"], **{k: record[k] for k in FIELDS}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="glass")
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    runs = {"on": [], "off": []}
    for r in range(args.rounds):
        for arm in (("on", "off") if r % 2 == 0 else ("off", "on")):
            runs[arm].append(_bench(args, arm == "on"))
            print(f"round {r} {arm}: {runs[arm][-1]}", flush=True)
    if not all(run["huge_pages"] for run in runs["on"]) or any(run["huge_pages"] for run in runs["off"]):
        print("warning: the kernel did not give the arms the pages they asked for (see the records)", file=sys.stderr)
    summary = {arm: {k: statistics.median(run[k] for run in arms) for k in FIELDS} for arm, arms in runs.items()}
    ratios = {k: asdict(paired_ratio([run[k] for run in runs["on"]], [run[k] for run in runs["off"]]))
              for k in FIELDS}
    out = {"model": args.model, "method": args.method, "density": args.density, "rounds": args.rounds,
           "gen_tokens": args.gen_tokens, "threads": args.threads, "medians": summary, "ratio_on_to_off": ratios,
           "runs": runs}
    path = Path(__file__).resolve().parent / "results" / f"huge-pages-{args.model}-g{args.gen_tokens}.json"
    atomic_write(path, json.dumps(out, indent=1) + "\n")
    for k in FIELDS:
        q = ratios[k]
        print(f"{k:>24}: on {summary['on'][k]:8.2f}  off {summary['off'][k]:8.2f}  on/off {q['mean']:.3f} "
              f"[{q['low']:.3f}, {q['high']:.3f}]")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
