"""Where the product's selections stand against their fidelity goals, from the committed records.

    python benchmarks/goals.py            # print the table (BENCHMARKS.md renders it too)

The goals, for the default ``glass`` and its refresh variants at density 0.5 and 8-token
prompts: KL at most 0.8x ``glass-a`` (the paper's method), 0.85x ``global`` (the prior alone)
and 0.5x ``griffin`` (the prompt alone), and, with refresh, at most the static oracle's.

Every committed run under ``results/fidelity/`` of the test split at float weights joins a
*pool* with the other runs of the same model, corpus and reference length: they score the same
prompts (document ``doc`` at prompt length ``P``) against the same dense reference, so a method
of one run pairs with a base method of another on the prompts both scored. ``pools`` checks
that assumption: a method scored on the same prompt in two runs of a pool must agree (to 1e-4),
else the records come from different settings and pooling them is an error.

Each cell is the ratio of the two mean KLs over the shared prompts with its 95% interval
(Fieller's, for paired values: ``glass_llm.intervals.paired_ratio``); ``*`` marks a ratio whose
interval lies entirely at or below the goal, ``(x)`` one whose interval lies entirely above it.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from glass_llm.evaluation.report import read_records_csv
from glass_llm.intervals import paired_ratio

HERE = Path(__file__).resolve().parent
FIDELITY = HERE / "results" / "fidelity"

DENSITY = 0.5
CANDIDATES = ("glass", "glass-prompt-lam", "glass-greedy", "glass-schedule", "glass-schedule-comp", "glass-refresh", "glass-refresh-start",
              "glass-refresh-start-fade", "glass-refresh-start-fade-comp", "glass-refresh-start-fade-comp-running")
GOALS = (("glass-a", 0.8), ("global", 0.85), ("griffin", 0.5), ("oracle", 1.0))
REFRESHING = ("glass-refresh", "glass-refresh-start", "glass-refresh-start-fade",
              "glass-refresh-start-fade-comp", "glass-refresh-start-fade-comp-running")  # the oracle goal is theirs
MIN_PROMPTS = 8
TOLERANCE = 1e-4

PoolKey = tuple  # (model, corpus, gen_tokens)


def pools(folder: Path = FIDELITY) -> dict[PoolKey, dict[str, dict[tuple[int, int], float]]]:
    """Per pool, per method at ``DENSITY``: KL per (prompt length, document), from every
    test-split, float-weights run under ``folder``; a disagreement between two runs is an error."""
    out: dict = defaultdict(dict)
    origin: dict = {}
    for run in sorted(p for p in folder.iterdir() if (p / "records.csv").is_file() and (p / "settings.json").is_file()):
        s = json.loads((run / "settings.json").read_text(encoding="utf-8"))
        if s.get("split", "test") != "test" or s.get("weights", "float") != "float":
            continue
        key = (s["model"], s["corpus"], int(s["gen_tokens"]))
        for r in read_records_csv((run / "records.csv").read_text(encoding="utf-8")):
            if abs(r["density"] - DENSITY) > 1e-9:
                continue
            kl = out[key].setdefault(r["method"], {})
            at = (int(r["prompt_tokens"]), int(r["doc"]))
            if at in kl and abs(kl[at] - r["kl"]) > TOLERANCE * max(1.0, abs(kl[at])):
                raise ValueError(f"runs {origin[key, r['method'], at]} and {run.name} disagree on {r['method']} "
                                 f"at P = {at[0]}, document {at[1]} ({kl[at]:.5f} against {r['kl']:.5f}): "
                                 "they were not made with the same settings and cannot be pooled")
            kl.setdefault(at, r["kl"])
            origin.setdefault((key, r["method"], at), run.name)
    return dict(out)


def ratio_cell(method: dict, base: dict, prompt_tokens: int, goal: float) -> tuple[str, int]:
    """``ratio [low, high]`` of the mean KLs over the prompts of length ``prompt_tokens`` both
    scored, with ``*`` (meets ``goal`` with confidence) or ``(x)`` (misses it with confidence);
    ``–`` with fewer than ``MIN_PROMPTS`` shared prompts. Also returns the number of prompts."""
    keys = sorted(k for k in method if k[0] == prompt_tokens and k in base)
    if len(keys) < MIN_PROMPTS or sum(base[k] for k in keys) <= 0:
        return "–", len(keys)
    ci = paired_ratio([method[k] for k in keys], [base[k] for k in keys])
    ratio, low, high = ci.mean, ci.low, ci.high
    mark = "*" if high <= goal else " (x)" if low > goal else ""
    return f"{ratio:.2f}{mark} [{low:.2f}, {high:.2f}]", len(keys)


def rows(folder: Path = FIDELITY) -> list[list[str]]:
    out = []
    for (model, corpus, gen), methods in sorted(pools(folder).items()):
        for cand in CANDIDATES:
            if cand not in methods:
                continue
            for P in sorted({P for P, _ in methods[cand]}):
                cells, counts = [], []
                for base, goal in GOALS:
                    if base not in methods or (base == "oracle" and cand not in REFRESHING):
                        cells.append("–")
                        continue
                    cell, n = ratio_cell(methods[cand], methods[base], P, goal)
                    cells.append(cell)
                    counts.append(n)
                if any(c != "–" for c in cells):
                    out.append([model, corpus, str(gen), str(P), f"`{cand}`", str(max(counts))] + cells)
    return out


def markdown(folder: Path = FIDELITY) -> str:
    header = ["model", "corpus", "G", "P", "method", "prompts"] + [f"/ {b} (goal {g:g}x)" for b, g in GOALS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 6 + "---:|" * len(GOALS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(folder)]
    return "\n".join(lines) + "\n"


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
