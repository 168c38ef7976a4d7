"""The checks stored with a model's cached default prior, written as records.

    python benchmarks/prior_checks.py --model smollm2-135m
    # writes results/{lam,reply,neighbours}-check-smollm2-135m.json

Loads the model's default prior through ``get_or_build_prior`` (which adds what a cached prior of
an older format lacks) and writes what its three checks measured on text the model writes itself:

* the short-prompt lam check (``glass_llm.lam_choice``): per candidate lam, the KL of
  ``glass-fixed-lam`` at that lam over its KL at 0.5 on 8-token prompts (geometric mean over rows,
  95% t interval's upper end), and the lam ``glass`` fuses at up to 8 prompt tokens
  (BENCHMARKS.md, "The short-prompt lam check");
* the schedule of greedy replies (``glass_llm.reply_schedule``): each block's loss at density 0.5
  on greedy replies, and per checked density the KL of ``glass`` with the schedule of those losses
  over its KL at one density for all, whether ``glass`` allocates from it there, and whether the
  stored schedule's check passed there (``stored_used``: what ``glass`` did before);
* the nearest-replies check (``glass_llm.neighbours_check``): the KL of ``glass-neighbours`` over
  that of ``glass-one-prior`` and the upper end of its interval, and whether ``glass`` takes the
  nearest replies.

``goals.py`` reads them to know which committed runs score the current ``glass``. Each record
carries the prior's fingerprint (``Prior.fingerprint``): a prior built on another machine differs
in its last bits, and so may its checks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from glass_llm import load_model
from glass_llm.build import get_or_build_prior
from glass_llm.io import atomic_write

HERE = Path(__file__).resolve().parent


def record_path(kind: str, model: str) -> Path:
    return HERE / "results" / f"{kind}-{model}.json"


def lam_markdown(paths: list[Path]) -> str:
    """The table of the lam check records: per model, each candidate's KL ratio and what ``glass`` fuses at."""
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


def reply_markdown(paths: list[Path]) -> str:
    """Per model and checked density: the KL ratio, its upper end and whether ``glass`` uses the schedule."""
    lines = ["| model | replies (losses, check) | density | KL with the schedule / one density (geometric mean) | "
             "95% upper end | `glass` allocates from it |", "|---|---:|---:|---:|---:|---|"]
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        for d, ratio, upper, used in zip(r["densities"], r["ratio"], r["upper"], r["used"]):
            lines.append(f"| {r['model']} | {r['gain_rows_used']}, {r['check_rows_used']} | {d:g} | {ratio:.3f} | "
                         f"{upper:.3f} | {'yes' if used else 'no: one density'} |")
    return "\n".join(lines)


def neighbours_markdown(paths: list[Path]) -> str:
    """Per model: the nearest-replies check's ratio, its upper end and whether ``glass`` takes the replies."""
    lines = ["| model | rows of the model's own text | KL of `glass-neighbours` / `glass-one-prior` (geometric mean) | "
             "95% upper end | `glass` takes the nearest replies |", "|---|---:|---:|---:|---|"]
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        lines.append(f"| {r['model']} | {r['rows_used']} | {r['ratio']:.3f} | {r['upper']:.3f} | "
                     f"{'yes' if r['used'] else 'no: the one prior'} |")
    return "\n".join(lines)


def records(model_name: str, prior, threads: int) -> dict[str, dict]:
    """The three records of ``prior``'s calibration, by kind."""
    cal = prior.calibration
    common = {"prior_fingerprint": prior.fingerprint,
              "command": f"python benchmarks/prior_checks.py --model {model_name}", "threads": threads}
    densities = [round(d, 6) for d in cal.reply_check_densities.tolist()]  # stored as float32
    return {
        "lam-check": {"model": model_name, "lams": cal.lam_check_lams.tolist(), "ratio": cal.lam_check_ratio.tolist(),
                      "upper": cal.lam_check_upper.tolist(), "short_lam": cal.short_lam, **cal.meta["lam_check"],
                      **common},
        "reply-check": {"model": model_name, "densities": densities, "ratio": cal.reply_check_ratio.tolist(),
                        "upper": cal.reply_check_upper.tolist(), "used": [cal.use_reply_schedule(d) for d in densities],
                        "stored_used": [cal.use_schedule(d) for d in densities], "loss": cal.reply_loss.tolist(),
                        **cal.meta["reply_schedule"], **common},
        "neighbours-check": {"model": model_name, "ratio": float(cal.neighbours_check[0]),
                             "upper": float(cal.neighbours_check[1]), "used": cal.use_neighbours,
                             **cal.meta["neighbours_check"], **common},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    for kind, out in records(args.model, get_or_build_prior(model, tok, args.model), args.threads).items():
        atomic_write(record_path(kind, args.model), json.dumps(out, indent=1) + "\n")
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
