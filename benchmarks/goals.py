"""Where the product's selections stand against their fidelity goals, from the committed records.

    python benchmarks/goals.py            # print the table (BENCHMARKS.md renders it too)

The goals, for the default ``glass`` and its refresh variants at density 0.5 and 8-token
prompts: KL at most 0.8x ``glass-a`` (the paper's method), 0.85x ``global`` (the prior alone)
and 0.5x ``griffin`` (the prompt alone), and, with refresh, at most the static oracle's.

Every committed run under ``results/fidelity/`` of the test split at float weights, without the
loop guard, joins a *pool* with the other runs of the same model, corpus, reference length and prior build
(below): they score the same
prompts (document ``doc`` at prompt length ``P``) against the same dense reference, so a method
of one run pairs with a base method of another on the prompts both scored. ``pools`` checks
that assumption: a method scored on the same prompt in two runs of a pool must agree (to
``TOLERANCE``, which leaves room for the near-ties that two machines break apart),
else the records come from different settings and pooling them is an error. A prior built on
another machine differs in its last bits (sampling follows floating-point logits), and so do the
KLs of the methods that read it; so runs pool by ``prior_fingerprint`` (in their results since it
was recorded; the runs before it are one build, ``earlier``), and the methods that read no prior
(dense, GRIFFIN, the oracle) join the pools of every build.

``glass`` changed three times under its name, and its records are read as what they scored. First it
came to fuse at the short-prompt lam its prior's check chose for the model (``glass_llm.lam_choice``):
a run written before that (its results carry no ``prior_short_lam``) scored today's
``glass-fixed-lam``. Then it came to allocate its per-layer densities from the schedule of greedy
replies (``glass_llm.reply_schedule``): a run written between the two (``prior_short_lam`` but no
``prior_reply_schedule``) scored today's ``glass-stored-schedule``, and the method of that
schedule, while opt-in, was named ``glass-reply-schedule``. Last it came to take its global view
from the nearest greedy replies where its prior's check shows that better
(``glass_llm.neighbours_check``): a run written before that (no ``prior_neighbours``) scored today's
``glass-one-prior``. Which records score today's ``glass`` then follows from each model's three
checks (``results/lam-check-MODEL.json``, ``results/reply-check-MODEL.json`` and
``results/neighbours-check-MODEL.json``, from ``prior_checks.py``): ``glass-fixed-lam``'s are
``glass-stored-schedule``'s where the lam check kept lam 0.5 or the prompt has 32 tokens or more,
``glass-prompt-lam``'s where it chose that method's short-prompt lam; ``glass-stored-schedule``'s
are ``glass-one-prior``'s where both the reply check and the stored schedule's check keep one
density at 0.5, and ``glass-reply-schedule``'s always; ``glass-one-prior``'s are ``glass``'s where
the nearest-replies check failed, ``glass-neighbours``'s where it passed. Records read under another name
join the pool's records of that name under the same agreement check.

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
from glass_llm.methods import METHODS, PROMPT_LAM_TOKENS, PROMPT_LAMS

HERE = Path(__file__).resolve().parent
FIDELITY = HERE / "results" / "fidelity"

DENSITY = 0.5
CANDIDATES = ("glass", "glass-linear", "glass-neighbours", "glass-one-prior", "glass-stored-schedule", "glass-fixed-lam", "glass-prompt-lam",
              "glass-greedy", "glass-schedule",
              "glass-schedule-comp", "glass-refresh", "glass-refresh-start",
              "glass-refresh-start-fade", "glass-refresh-start-fade-comp", "glass-refresh-start-fade-comp-running",
              "glass-refresh-reply", "glass-refresh-reply-fade", "glass-refresh-reply-greedy", "glass-refresh-neighbours",
              "glass-refresh-linear")
GOALS = (("glass-a", 0.8), ("global", 0.85), ("griffin", 0.5), ("oracle", 1.0))
REFRESHING = ("glass-refresh", "glass-refresh-start", "glass-refresh-start-fade",
              "glass-refresh-start-fade-comp", "glass-refresh-start-fade-comp-running", "glass-refresh-reply",
              "glass-refresh-reply-fade", "glass-refresh-reply-greedy",
              "glass-refresh-neighbours", "glass-refresh-linear")  # the oracle goal is theirs
MIN_PROMPTS = 8
# Two runs of one prompt agree within this (absolute, relative above a KL of 1): runs are pooled across
# machines, where a near-tie at the cut of a ranking may flip a neuron between two CPUs' floating-point
# results (GRIFFIN: 2 of 128 prompts, up to 0.11%; glass on the same prior build rerun on another machine:
# 13 of 32 prompts, up to 5e-4), while another setting moves a prompt's KL by far more
TOLERANCE = 5e-3

PoolKey = tuple  # (model, corpus, gen_tokens, prior build)
EARLIER = "earlier"  # the prior build of the runs written before results carried its fingerprint


Checks = tuple  # (short lam, reply schedule or stored one used, nearest replies used), each None without a record


def checked_glass(model: str, folder: Path = FIDELITY) -> Checks:
    """What ``glass`` does on ``model``'s default prior at ``DENSITY`` (its check records): the
    short-prompt lam it fuses at; whether its per-layer density differs from that of
    ``glass-stored-schedule``, i.e. whether the schedule of greedy replies or the stored one is used
    (False: both keep one density); and whether it takes the nearest greedy replies. None: no record."""
    lam_path, reply_path = folder.parent / f"lam-check-{model}.json", folder.parent / f"reply-check-{model}.json"
    short_lam = json.loads(lam_path.read_text(encoding="utf-8"))["short_lam"] if lam_path.is_file() else None
    reply = None
    if reply_path.is_file():
        r = json.loads(reply_path.read_text(encoding="utf-8"))
        at = [abs(d - DENSITY) < 1e-6 for d in r["densities"]]
        if any(at):  # the records of glass before the reply schedule are glass's where both keep one density
            i = at.index(True)
            reply = bool(r["used"][i] or r["stored_used"][i])
    near_path = folder.parent / f"neighbours-check-{model}.json"
    near = bool(json.loads(near_path.read_text(encoding="utf-8"))["used"]) if near_path.is_file() else None
    return short_lam, reply, near


def read_as(method: str, prompt_tokens: int, checks: Checks) -> list[str]:
    """The names a record of ``method`` at this prompt length scores, itself first, on a model
    whose checks (``checked_glass``) found ``checks``."""
    short_lam, reply, near = checks
    names = [method]
    if short_lam is not None and (
            (method == "glass-fixed-lam" and (short_lam == 0.5 or prompt_tokens >= PROMPT_LAM_TOKENS[-1]))
            or (method == "glass-prompt-lam" and short_lam == PROMPT_LAMS[0])):
        names.append("glass-stored-schedule")
    if method == "glass-reply-schedule" or ("glass-stored-schedule" in names and reply is False):
        names.append("glass-one-prior")
    if ("glass-one-prior" in names and near is False) or (method == "glass-neighbours" and near is True):
        names.append("glass")
    return names


def _recorded_as(method: str, results: list[dict]) -> str:
    """A record's method as today's name: ``glass`` of a run written before one of its changes."""
    if method != "glass":
        return method
    if not any("prior_short_lam" in r for r in results):
        return "glass-fixed-lam"
    if not any("prior_reply_schedule" in r for r in results):
        return "glass-stored-schedule"
    return "glass" if any("prior_neighbours" in r for r in results) else "glass-one-prior"


def _reads_prior(method: str, lam: float) -> bool:
    """Whether ``method``'s records depend on the prior's build (a name no longer registered: assume so)."""
    if method == "oracle":
        return False
    spec = METHODS.get(method)
    return spec is None or spec.needs_prior_at(lam)


def pools(folder: Path = FIDELITY) -> dict[PoolKey, dict[str, dict[tuple[int, int], float]]]:
    """Per pool, per method at ``DENSITY``: KL per (prompt length, document), from every
    test-split, float-weights run under ``folder``; a disagreement between two runs is an error.

    A pool is one model, corpus and reference length, and one build of the default prior
    (``prior_fingerprint`` in the run's results; ``EARLIER`` for runs written before it was
    recorded). The methods that read no prior (dense, GRIFFIN, the oracle) join every build's pool."""
    out: dict = {}
    shared: dict = defaultdict(dict)
    origin: dict = {}
    for run in sorted(p for p in folder.iterdir() if (p / "records.csv").is_file() and (p / "settings.json").is_file()):
        s = json.loads((run / "settings.json").read_text(encoding="utf-8"))
        if s.get("split", "test") != "test" or s.get("weights", "float") != "float" or s.get("loop_guard", 0):
            continue
        base = (s["model"], s["corpus"], int(s["gen_tokens"]))
        results = run / "results.json"
        written = json.loads(results.read_text("utf-8")) if results.is_file() else []
        key = base + (next((r["prior_fingerprint"] for r in written if "prior_fingerprint" in r), EARLIER),)
        out.setdefault(key, {})  # every build seen gets its pool
        checks = checked_glass(s["model"], folder)
        for r in read_records_csv((run / "records.csv").read_text(encoding="utf-8")):
            if abs(r["density"] - DENSITY) > 1e-9:
                continue
            at = (int(r["prompt_tokens"]), int(r["doc"]))
            for name in read_as(_recorded_as(r["method"], written), at[0], checks):
                store, where = (out, key) if _reads_prior(name, r["lam"]) else (shared, base)
                kl = store[where].setdefault(name, {})
                if at in kl and abs(kl[at] - r["kl"]) > TOLERANCE * max(1.0, abs(kl[at])):
                    raise ValueError(f"runs {origin[where, name, at]} and {run.name} disagree on {name} "
                                     f"at P = {at[0]}, document {at[1]} ({kl[at]:.5f} against {r['kl']:.5f}): "
                                     "they were not made with the same settings and cannot be pooled")
                kl.setdefault(at, r["kl"])
                origin.setdefault((where, name, at), run.name)
    for key, methods in out.items():
        methods.update({name: dict(kl) for name, kl in shared.get(key[:3], {}).items()})
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
    """One row per candidate and prompt length, except where its records score another candidate
    (``read_as``): they are shown under that name."""
    out = []
    by_pool = sorted(pools(folder).items(), key=lambda kv: (kv[0][:3], kv[0][3] != EARLIER, kv[0][3]))
    for (model, corpus, gen, build), methods in by_pool:
        checks = checked_glass(model, folder)
        for cand in CANDIDATES:
            if cand not in methods:
                continue
            for P in sorted({P for P, _ in methods[cand]}):
                if len(read_as(cand, P, checks)) > 1:
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
                    out.append([model, corpus, str(gen), build[:7], str(P), f"`{cand}`", str(max(counts))] + cells)
    return out


def markdown(folder: Path = FIDELITY) -> str:
    header = ["model", "corpus", "G", "prior", "P", "method", "prompts"] + [f"/ {b} (goal {g:g}x)" for b, g in GOALS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 7 + "---:|" * len(GOALS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(folder)]
    return "\n".join(lines) + "\n"


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
