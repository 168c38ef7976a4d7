"""Reproduce the fidelity section of BENCHMARKS.md: choose lam on the calibration split, then measure
fidelity to the dense model on the test split for SmolLM2-135M and Gemma-3-270m.

    python benchmarks/fidelity.py [--out runs/fidelity] [--gen-tokens 64] [--prompts 32]

Steps (each ``glass eval`` run resumes if interrupted):
1. lam sweep on the calibration split (SmolLM2-135M, density 0.5): glass-a and glass-i
   at lam in {0, 0.1, 0.25, 0.5, 0.75, 0.9, 1};
2. pick lam: the value with the smallest KL of glass-a, averaged over the calibration
   prompt lengths (ties: the larger lam);
3. test split, both models, all methods, density 0.5, prompt lengths 8/16/32/64, with
   that lam;
4. copy the plots to benchmarks/figures/ and the raw records of every run (results.json,
   the per-prompt records.csv, settings.json) to benchmarks/results/fidelity/<run>/, from
   which benchmarks/render.py renders the tables (add ``<!-- render: fidelity <run> -->``
   to a fragment in benchmarks/text/).
With ``--ablation`` it instead compares prior sizes on the calibration split: self-sampled
priors of 2048 / 8192 / 16384 tokens (each with its own calibration), for global, glass-a
and glass-schedule-adaptive (the default glass at the time) at 8- and 32-token prompts; the
smallest size that costs no fidelity is the default (``prior_cache.DEFAULT_PRIOR_TOKENS``).
Wrap it in ``flock /tmp/glass-heavy.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from glass_llm.evaluation.report import comparisons_markdown, paired_comparisons, read_records_csv

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "results" / "fidelity"
RAW_FILES = ("results.json", "records.csv", "settings.json")
LAMS = "0,0.1,0.25,0.5,0.75,0.9,1"
METHODS = "dense,griffin,global,magnitude,random,glass-a,glass-i"
MODELS = ("smollm2-135m", "gemma3-270m")


def glass(*args: str) -> None:
    cmd = [sys.executable, "-m", "glass_llm", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def keep_records(run_dir: Path, name: str) -> Path:
    """Copy a finished run's raw records to benchmarks/results/fidelity/NAME/ (committed)."""
    dest = RECORDS / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname in RAW_FILES:
        if not (run_dir / fname).is_file():
            raise SystemExit(f"{run_dir / fname} is missing: the run did not finish (run the same command again)")
        shutil.copyfile(run_dir / fname, dest / fname)
    print(f"raw records: {dest}", flush=True)
    return dest


def pick_lam(results_path: Path, method: str = "glass-a") -> float:
    """The lam with the smallest mean KL of ``method`` over the prompt lengths."""
    results = json.loads(results_path.read_text())
    by_lam: dict[float, list[float]] = {}
    for r in results:
        if r["method"] == method:
            by_lam.setdefault(r["lam"], []).append(r["kl"])
    if not by_lam:
        raise SystemExit(f"{results_path} holds no {method} results")
    means = {lam: sum(v) / len(v) for lam, v in by_lam.items()}
    for lam in sorted(means):
        print(f"  {method} lam {lam:g}: mean KL {means[lam]:.4f}")
    return min(means, key=lambda lam: (means[lam], -lam))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/fidelity")
    p.add_argument("--gen-tokens", default="64")
    p.add_argument("--prompts", default="32")
    p.add_argument("--calib-prompts", default="8")
    p.add_argument("--prior-tokens", default="8192")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--lam", default=None, help="skip the sweep and use this lam")
    p.add_argument("--threads", default="1",
                   help="torch threads (default 1: on a shared 2-core machine more threads oversubscribe the cores)")
    p.add_argument("--ablation", action="store_true", help="run the prior ablation instead (calibration split)")
    p.add_argument("--report", action="store_true", help="print the comparison with the paper's claims and exit")
    args = p.parse_args()
    out = Path(args.out)
    if args.ablation:
        return ablation(args, out)
    if args.report:
        for model in args.models.split(","):
            path = out / model / "results.json"
            if path.is_file():
                print(compare_with_paper(json.loads(path.read_text()), model))
            if (out / model / "records.csv").is_file():
                records = read_records_csv((out / model / "records.csv").read_text())
                print(comparisons_markdown(paired_comparisons(records, "griffin")))
        return 0
    common = ["--gen-tokens", args.gen_tokens, "--prior-tokens", args.prior_tokens, "--density", "0.5",
              "--batch-size", "16", "--corpus", "wikipedia", "--threads", args.threads]
    lam = args.lam
    if lam is None:
        sweep = out / "lam-smollm2-135m"
        glass("eval", "smollm2-135m", "--split", "calib", "--methods", "dense,glass-a,glass-i", "--lam", LAMS,
              "--prompt-tokens", "8,32", "--prompts", args.calib_prompts, *common, "--out", str(sweep))
        keep_records(sweep, "lam-smollm2-135m")
        lam = f"{pick_lam(sweep / 'results.json'):g}"
        print(f"chosen lam: {lam}", flush=True)
        figs = HERE / "figures"
        figs.mkdir(exist_ok=True)
        shutil.copy(sweep / "kl_vs_lam_d0.5.png", figs / "fidelity_lam_sweep_smollm2-135m.png")
    # two passes: the first batch of 16 prompts of every length for both models, then the
    # rest (the journal resumes), so that a run cut short still covers both models
    for limit in (["--max-items", "4"], []):
        for model in args.models.split(","):
            glass("eval", model, "--methods", METHODS, "--lam", lam, "--prompt-tokens", "8,16,32,64",
                  "--prompts", args.prompts, *common, *limit, "--out", str(out / model))
    for model in args.models.split(","):
        dest = out / model
        figs = HERE / "figures"
        figs.mkdir(exist_ok=True)
        for name in ("fidelity_d0.5.png", "jaccard_layers_d0.5.png"):
            shutil.copy(dest / name, figs / f"{name[:-4]}_{model}.png")
        keep_records(dest, model)
    return 0


def compare_with_paper(results: list[dict], model: str) -> str:
    """Markdown: GLASS against GRIFFIN (relative ppl and KL change) and, per layer,
    whether the GLASS set is closer to the oracle than both single views."""
    cell = {(r["method"], r["prompt_tokens"]): r for r in results}
    Ps = sorted({r["prompt_tokens"] for r in results})
    lines = [f"#### {model}", "",
             "| P | method | ppl vs GRIFFIN | KL vs GRIFFIN | KL vs global | layers closer to oracle than both views |",
             "|---:|---|---:|---:|---:|---:|"]
    for P in Ps:
        g, glob = cell.get(("griffin", P)), cell.get(("global", P))
        if g is None or glob is None:
            continue
        for m in ("glass-a", "glass-i"):
            r = cell.get((m, P))
            if r is None:
                continue
            # GRIFFIN and global use the activation statistic, so only glass-a shares their oracle
            better = "-" if m != "glass-a" else f"{sum(x > max(a, b) for x, a, b in zip(r['jaccard'], g['jaccard'], glob['jaccard']))}/{len(r['jaccard'])}"
            lines.append(f"| {P} | {m} | {100 * (r['ppl'] / g['ppl'] - 1):+.1f}% | {100 * (r['kl'] / g['kl'] - 1):+.1f}% "
                         f"| {100 * (r['kl'] / glob['kl'] - 1):+.1f}% | {better} |")
    return "\n".join(lines) + "\n"


def ablation(args, out: Path) -> int:
    """Prior size, SmolLM2-135M, calibration split, density 0.5."""
    from glass_llm.prior_cache import default_prior_path

    lam = args.lam or "0.5"
    priors = {}
    for source, tokens in (("self", "2048"), ("self", "8192"), ("self", "16384")):
        path = default_prior_path("smollm2-135m", source, int(tokens))
        if not path.is_file():
            glass("prior", "smollm2-135m", "--source", source, "--tokens", tokens, "-o", str(path))
        priors[f"{source}-{tokens}"] = path
    for name, path in priors.items():
        glass("eval", "smollm2-135m", "--split", "calib", "--methods", "dense,global,glass-a,glass-schedule-adaptive",
              "--lam", lam,
              "--prompt-tokens", "8,32", "--prompts", args.calib_prompts, "--gen-tokens", args.gen_tokens,
              "--density", "0.5", "--batch-size", "16", "--corpus", "wikipedia", "--threads", args.threads,
              "--prior", str(path), "--no-plots", "--out", str(out / f"prior-{name}"))
        keep_records(out / f"prior-{name}", f"prior-{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
