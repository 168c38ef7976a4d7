"""Build the accuracy table of the lm-eval section of BENCHMARKS.md from the harness's result files.

    python benchmarks/lm_eval_table.py benchmarks/lm_eval_results > table.md

Layout read: RESULTS/<model>/<method>/**/results_*.json (the newest file wins, by the
timestamp in its name). ``benchmarks/render.py`` puts these tables into BENCHMARKS.md.
Each cell is accuracy in percent with its 95% interval half-width (1.96 x the
harness's standard error) and, for tasks with it, acc_norm on a second line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = ("hellaswag_offline", "piqa_offline", "copa_offline", "boolq_offline", "arc_easy_offline",
         "arc_challenge_offline", "winogrande_offline")
SHORT = {"hellaswag_offline": "HellaSwag", "piqa_offline": "PIQA", "copa_offline": "COPA", "boolq_offline": "BoolQ",
         "arc_easy_offline": "ARC-E", "arc_challenge_offline": "ARC-C", "winogrande_offline": "Winogrande"}
METHODS = ("dense", "griffin", "glass-a", "glass")


def newest_results(folder: Path) -> dict | None:
    files = sorted(folder.rglob("results_*.json"), key=lambda p: p.name)  # results_<ISO time>.json
    return json.loads(files[-1].read_text()) if files else None


def cell(res: dict, metric: str) -> str:
    value, err = res.get(f"{metric},none"), res.get(f"{metric}_stderr,none")
    if value is None:
        return "-"
    if isinstance(err, (int, float)):
        return f"{100 * value:.1f} ± {196 * err:.1f}"
    return f"{100 * value:.1f}"


def table(root: Path, metric: str) -> list[str]:
    lines = [f"| model | method | docs/task | {' | '.join(SHORT[t] for t in TASKS)} | mean |",
             "|---|---|---|" + "---|" * (len(TASKS) + 1)]
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for method in METHODS:
            data = newest_results(model_dir / method) if (model_dir / method).is_dir() else None
            if data is None:
                continue
            cells, values = [], []
            for task in TASKS:
                res = data["results"].get(task, {})
                key = metric if f"{metric},none" in res else "acc"
                cells.append(cell(res, key) + ("" if key == metric else "*"))
                if f"{key},none" in res:
                    values.append(res[f"{key},none"])
            mean = f"{100 * sum(values) / len(values):.1f}" if len(values) == len(TASKS) else "-"
            limit = data.get("config", {}).get("limit")
            docs = "all" if limit is None else f"{int(limit)}"
            lines.append(f"| {model_dir.name} | {method} | {docs} | {' | '.join(cells)} | {mean} |")
    return lines


def markdown(root: Path) -> str:
    """Both tables (acc, acc_norm) with their captions."""
    return "\n".join(["Accuracy (%, ± 95% interval half-width = 1.96 x the harness's standard error)", "",
                      *table(root, "acc"), "",
                      "acc_norm (length-normalised accuracy; * = task has acc only, acc shown)", "",
                      *table(root, "acc_norm")]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    if not root.is_dir():
        print(f"{root} is not a folder of results", file=sys.stderr)
        return 2
    print(markdown(root), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
