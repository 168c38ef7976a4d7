"""Where the product's selections stand against their fidelity goals, from the committed records.

    python benchmarks/goals.py            # print the table (BENCHMARKS.md renders it too)

The goals, for the default ``glass`` and its refresh variants at density 0.5 and 8-token
prompts: KL at most 0.8x ``glass-a`` (the paper's method), 0.85x ``global`` (the prior alone)
and 0.5x ``griffin`` (the prompt alone), and, with refresh, at most the static oracle's.

Every committed run under ``results/fidelity/`` of the test split at float weights, without the
loop guard, joins a *pool* with the other runs of the same model, corpus and reference length: they score the same
prompts (document ``doc`` at prompt length ``P``) against the same dense reference, so a method
of one run pairs with a base method of another on the prompts both scored. ``pools`` checks
that assumption: a method scored on the same prompt in two runs of a pool must agree (to 1e-4),
else the records come from different settings and pooling them is an error.

``glass`` changed once under its name: it now fuses at the short-prompt lam its prior's check
chose for the model (``glass_llm.lam_choice``). A run written before that (its results carry no
``prior_short_lam``) scored today's ``glass-fixed-lam`` under the name ``glass``, and is read so.
Which committed records score today's ``glass`` follows from each model's check
(``results/lam-check-MODEL.json``, from ``lam_check.py``): ``glass-fixed-lam``'s where the check
kept lam 0.5 or the prompt has 32 tokens or more, ``glass-prompt-lam``'s where it chose that
method's short-prompt lam; they join the pool's ``glass`` under the same agreement check.

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
from glass_llm.methods import PROMPT_LAM_TOKENS, PROMPT_LAMS

HERE = Path(__file__).resolve().parent
FIDELITY = HERE / "results" / "fidelity"

DENSITY = 0.5
CANDIDATES = ("glass", "glass-fixed-lam", "glass-prompt-lam", "glass-greedy", "glass-schedule", "glass-schedule-comp", "glass-refresh", "glass-refresh-start",
              "glass-refresh-start-fade", "glass-refresh-start-fade-comp", "glass-refresh-start-fade-comp-running")
GOALS = (("glass-a", 0.8), ("global", 0.85), ("griffin", 0.5), ("oracle", 1.0))
REFRESHING = ("glass-refresh", "glass-refresh-start", "glass-refresh-start-fade",
              "glass-refresh-start-fade-comp", "glass-refresh-start-fade-comp-running")  # the oracle goal is theirs
MIN_PROMPTS = 8
TOLERANCE = 1e-4

PoolKey = tuple  # (model, corpus, gen_tokens)


def checked_glass(model: str, folder: Path = FIDELITY) -> float | None:
    """The short-prompt lam ``glass`` fuses at on ``model``'s default prior (its lam check record), or None."""
    path = folder.parent / f"lam-check-{model}.json"
    return json.loads(path.read_text(encoding="utf-8"))["short_lam"] if path.is_file() else None


def _same_as_glass(method: str, prompt_tokens: int, short_lam: float | None) -> bool:
    """Whether ``method``'s records at this prompt length score today's ``glass`` on a model whose check chose ``short_lam``."""
    if short_lam is None:
        return False
    if method == "glass-fixed-lam":
        return short_lam == 0.5 or prompt_tokens >= PROMPT_LAM_TOKENS[-1]
    return method == "glass-prompt-lam" and short_lam == PROMPT_LAMS[0]


def pools(folder: Path = FIDELITY) -> dict[PoolKey, dict[str, dict[tuple[int, int], float]]]:
    """Per pool, per method at ``DENSITY``: KL per (prompt length, document), from every
    test-split, float-weights run under ``folder``; a disagreement between two runs is an error."""
    out: dict = defaultdict(dict)
    origin: dict = {}
    for run in sorted(p for p in folder.iterdir() if (p / "records.csv").is_file() and (p / "settings.json").is_file()):
        s = json.loads((run / "settings.json").read_text(encoding="utf-8"))
        if s.get("split", "test") != "test" or s.get("weights", "float") != "float" or s.get("loop_guard", 0):
            continue
        key = (s["model"], s["corpus"], int(s["gen_tokens"]))
        results = run / "results.json"
        checked = results.is_file() and any("prior_short_lam" in r for r in json.loads(results.read_text("utf-8")))
        short_lam = checked_glass(s["model"], folder)
        for r in read_records_csv((run / "records.csv").read_text(encoding="utf-8")):
            if abs(r["density"] - DENSITY) > 1e-9:
                continue
            at = (int(r["prompt_tokens"]), int(r["doc"]))
            method = "glass-fixed-lam" if r["method"] == "glass" and not checked else r["method"]
            names = [method] + (["glass"] if _same_as_glass(method, at[0], short_lam) else [])
            for name in names:
                kl = out[key].setdefault(name, {})
                if at in kl and abs(kl[at] - r["kl"]) > TOLERANCE * max(1.0, abs(kl[at])):
                    raise ValueError(f"runs {origin[key, name, at]} and {run.name} disagree on {name} "
                                     f"at P = {at[0]}, document {at[1]} ({kl[at]:.5f} against {r['kl']:.5f}): "
                                     "they were not made with the same settings and cannot be pooled")
                kl.setdefault(at, r["kl"])
                origin.setdefault((key, name, at), run.name)
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
    """One row per candidate and prompt length, except the records that are today's ``glass``
    under another name (``glass-fixed-lam`` or ``glass-prompt-lam`` where ``_same_as_glass``)."""
    out = []
    for (model, corpus, gen), methods in sorted(pools(folder).items()):
        short_lam = checked_glass(model, folder)
        for cand in CANDIDATES:
            if cand not in methods:
                continue
            for P in sorted({P for P, _ in methods[cand]}):
                if _same_as_glass(cand, P, short_lam):
                    continue
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
