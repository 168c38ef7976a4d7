"""Pair two methods from committed fidelity runs on the same prompts, across runs.

    python benchmarks/compare_runs.py RUN:METHOD[@DENSITY] BASE_RUN:BASE_METHOD[@DENSITY]

RUN is a folder under ``benchmarks/results/fidelity/`` (with ``records.csv``), or a path
under ``benchmarks/results/`` such as ``frontier/smollm2-135m-g256``. Runs made
with the same model, corpus, split, prompt lengths and prompt count score the same prompts,
so a method at one density in one run can be paired with another method at another density
in another run (for example at equal FFN work). Prints, per prompt length, both mean KLs and
the change of the mean with the 95% t interval of the paired difference (``*``: it excludes
zero), and the ratio of the means with its 95% interval (Fieller's, ``intervals.paired_ratio``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glass_llm.evaluation.report import read_records_csv
from glass_llm.intervals import paired_diff, paired_ratio

RESULTS = Path(__file__).resolve().parent / "results" / "fidelity"


def per_prompt(spec: str) -> dict[tuple[int, int], float]:
    """KL per (prompt length, document) of ``RUN:METHOD[@DENSITY]``."""
    run, _, rest = spec.partition(":")
    method, _, density = rest.partition("@")
    if not run or not method:
        raise SystemExit(f"give RUN:METHOD[@DENSITY], got {spec!r}")
    path = (RESULTS.parent if "/" in run else RESULTS) / run / "records.csv"
    if not path.exists():
        raise SystemExit(f"no records at {path}")
    rows = [r for r in read_records_csv(path.read_text()) if r["method"] == method
            and (not density or abs(r["density"] - float(density)) < 1e-9)]
    densities = {r["density"] for r in rows}
    if not rows:
        raise SystemExit(f"{run} has no records of {method}" + (f" at density {density}" if density else ""))
    if len(densities) > 1:
        raise SystemExit(f"{run} has {method} at densities {sorted(densities)}: add @DENSITY")
    return {(r["prompt_tokens"], r["doc"]): r["kl"] for r in rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", help="RUN:METHOD[@DENSITY]")
    p.add_argument("base", help="RUN:METHOD[@DENSITY] to compare against")
    args = p.parse_args()
    a, b = per_prompt(args.method), per_prompt(args.base)
    for P in sorted({P for P, _ in a}):
        keys = sorted(k for k in a if k[0] == P and k in b)
        if len(keys) < 2:
            continue
        d = paired_diff([a[k] for k in keys], [b[k] for k in keys])
        r = paired_ratio([a[k] for k in keys], [b[k] for k in keys])
        mean_a, mean_b = (sum(x[k] for k in keys) / len(keys) for x in (a, b))
        star = "*" if d.low > 0 or d.high < 0 else ""
        print(f"P = {P}: {mean_a:.3f} against {mean_b:.3f} ({len(keys)} prompts): "
              f"{100 * d.mean / mean_b:+.1f}%{star} [{d.low:+.3f}, {d.high:+.3f}]; "
              f"ratio {r.mean:.2f} [{r.low:.2f}, {r.high:.2f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
