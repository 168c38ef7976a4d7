"""The short-prompt lam check of a model's cached default prior, written as a record.

    python benchmarks/lam_check.py --model smollm2-135m   # writes results/lam-check-smollm2-135m.json

Loads the model's default prior through ``get_or_build_prior`` (which adds the check to a cached
prior of format 5, ``glass_llm.lam_choice``) and writes what the check measured: per candidate
lam, the KL of ``glass-fixed-lam`` at that lam over its KL at 0.5 on 8-token prompts of the
model's own text (geometric mean over rows, 95% t interval's upper end), and the lam ``glass``
fuses at up to 8 prompt tokens. ``goals.py`` reads these records to know which committed runs
score the current ``glass`` (BENCHMARKS.md, "The short-prompt lam check").
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
    return HERE / "results" / f"lam-check-{model}.json"


def markdown(paths: list[Path]) -> str:
    """The table of the given records: per model, each candidate's KL ratio and what ``glass`` fuses at."""
    lines = ["| model | rows of the model's own text | lam | KL at lam / at 0.5 (geometric mean) | 95% upper end | "
             "`glass` fuses at |", "|---|---:|---:|---:|---:|---|"]
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        chosen = (f"{r['short_lam']:g} up to {r['prompt_tokens']} tokens, 0.5 from 32" if r["short_lam"] != 0.5
                  else "0.5 at every prompt length")
        for lam, ratio, upper in zip(r["lams"], r["ratio"], r["upper"]):
            lines.append(f"| {r['model']} | {r['rows_used']} of {r['rows']} | {lam:g} | {ratio:.3f} | {upper:.3f} | "
                         f"{chosen} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    cal = get_or_build_prior(model, tok, args.model).calibration
    check = cal.meta["lam_check"]
    out = {"model": args.model, "lams": cal.lam_check_lams.tolist(), "ratio": cal.lam_check_ratio.tolist(),
           "upper": cal.lam_check_upper.tolist(), "short_lam": cal.short_lam, **check,
           "command": f"python benchmarks/lam_check.py --model {args.model}", "threads": args.threads}
    path = record_path(args.model)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
