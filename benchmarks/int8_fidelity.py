"""What int8 weights cost in fidelity, alone and together with sparsity.

    python benchmarks/int8_fidelity.py [--model smollm2-135m] [--float-run NAME] [--out runs/int8]

Runs ``glass eval --weights int8`` with the settings of a committed float run
(``benchmarks/results/fidelity/NAME/settings.json``: same prompts, prompt lengths, generated
tokens and density), for the methods dense, griffin and glass-a, so every int8 record pairs
with the float record of the same method and prompt. Both are scored against the float dense
model. Prints, per method and prompt length, the mean KL of float and int8 and the ratio of
the means with the 95% t interval of the paired difference; copies the int8 run's records
to ``benchmarks/results/fidelity/NAME-int8/``. The target is int8 sparse within 5% of float
sparse. Wrap it in ``flock /tmp/glass-heavy.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from glass_llm.evaluation.report import read_records_csv
from glass_llm.intervals import paired_diff

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "results" / "fidelity"
METHODS = "dense,griffin,glass-a"


def compare(float_records: list[dict], int8_records: list[dict]) -> list[dict]:
    """Per (method, prompt length): float and int8 mean KL over the prompts both scored."""
    base = {(r["method"], r["prompt_tokens"], r["doc"]): r for r in float_records}
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for r in int8_records:
        key = (r["method"], r["prompt_tokens"], r["doc"])
        if key in base:
            groups.setdefault(key[:2], []).append((base[key], r))
    rows = []
    for (method, P), pairs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        f = [a["kl"] for a, _ in pairs]
        q = [b["kl"] for _, b in pairs]
        mean_f, mean_q = sum(f) / len(f), sum(q) / len(q)
        diff = paired_diff(q, f) if len(pairs) > 1 else None
        rows.append({"method": method, "prompt_tokens": P, "n": len(pairs), "float_kl": mean_f, "int8_kl": mean_q,
                     "ratio": mean_q / mean_f if mean_f > 0 else None,
                     "diff": None if diff is None else diff.as_dict()})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--float-run", default="smollm2-135m-wikipedia-d0.5-refresh")
    p.add_argument("--out", default="runs/int8")
    p.add_argument("--threads", default="2")
    args = p.parse_args()
    float_dir = RECORDS / args.float_run
    settings = json.loads((float_dir / "settings.json").read_text())
    if settings["model"] != args.model:
        raise SystemExit(f"{args.float_run} is a run of {settings['model']}, not {args.model}")
    out = Path(args.out) / args.float_run
    cmd = [sys.executable, "-m", "glass_llm", "eval", args.model, "--methods", METHODS, "--weights", "int8",
           "--density", ",".join(str(d) for d in settings["densities"]),
           "--prompt-tokens", ",".join(str(n) for n in settings["prompt_tokens"]),
           "--prompts", str(settings["n_prompts"]), "--gen-tokens", str(settings["gen_tokens"]),
           "--corpus", settings["corpus"], "--split", settings["split"], "--batch-size", str(settings["batch_size"]),
           "--seed", str(settings["seed"]), "--threads", args.threads, "--no-plots", "--out", str(out)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    dest = RECORDS / f"{args.float_run}-int8"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "records.csv", "settings.json"):
        shutil.copyfile(out / name, dest / name)
    rows = compare(read_records_csv((float_dir / "records.csv").read_text()),
                   read_records_csv((out / "records.csv").read_text()))
    print(f"\n{args.model}: KL(float dense || method) with float and with int8 weights, same prompts")
    print(f"{'method':<10} {'P':>3} {'n':>3} {'float':>8} {'int8':>8} {'ratio':>7}  int8 - float, 95% t")
    for r in rows:
        d = r["diff"]
        interval = "" if d is None else f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"{r['method']:<10} {r['prompt_tokens']:>3} {r['n']:>3} {r['float_kl']:8.4f} {r['int8_kl']:8.4f} "
              f"{ratio:>7}  {interval}")
    (dest / "comparison.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nrecords: {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
