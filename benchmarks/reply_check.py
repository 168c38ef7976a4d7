"""The schedule of greedy replies of a model's cached default prior, written as a record.

    python benchmarks/reply_check.py --model smollm2-135m   # writes results/reply-check-smollm2-135m.json

Loads the model's default prior through ``get_or_build_prior`` (which adds the measurement to a
cached prior of format 6, ``glass_llm.reply_schedule``) and writes what it measured: each block's
loss at density 0.5 on greedy replies, and per checked density the KL of ``glass`` with the schedule
of those losses over its KL at one density for all (geometric mean over replies, 95% t interval's
upper end), whether ``glass`` allocates from it there, and whether the stored schedule's check passed
there (``stored_used``: what ``glass`` did before). ``goals.py`` reads these records to know
which committed runs score the current ``glass`` (BENCHMARKS.md, "A schedule measured on greedy replies").
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from glass_llm import load_model
from glass_llm.build import get_or_build_prior

HERE = Path(__file__).resolve().parent


def record_path(model: str) -> Path:
    return HERE / "results" / f"reply-check-{model}.json"


def markdown(paths: list[Path]) -> str:
    """Per model and checked density: the KL ratio, its upper end and whether ``glass`` uses the schedule."""
    lines = ["| model | replies (losses, check) | density | KL with the schedule / one density (geometric mean) | "
             "95% upper end | `glass` allocates from it |", "|---|---:|---:|---:|---:|---|"]
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        for d, ratio, upper, used in zip(r["densities"], r["ratio"], r["upper"], r["used"]):
            lines.append(f"| {r['model']} | {r['gain_rows_used']}, {r['check_rows_used']} | {d:g} | {ratio:.3f} | "
                         f"{upper:.3f} | {'yes' if used else 'no: one density'} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    cal = get_or_build_prior(model, tok, args.model).calibration
    densities = cal.reply_check_densities.tolist()
    out = {"model": args.model, "densities": densities, "ratio": cal.reply_check_ratio.tolist(),
           "upper": cal.reply_check_upper.tolist(), "used": [cal.use_reply_schedule(d) for d in densities],
           "stored_used": [cal.use_schedule(d) for d in densities],
           "loss": cal.reply_loss.tolist(), **cal.meta["reply_schedule"],
           "command": f"python benchmarks/reply_check.py --model {args.model}", "threads": args.threads}
    path = record_path(args.model)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
