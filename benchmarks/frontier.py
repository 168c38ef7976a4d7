"""Quality-speed frontier: KL to the dense model against the measured decode speed-up.

    python benchmarks/frontier.py [--model smollm2-135m] [--prompts 16] [--gen-tokens 64]
    python benchmarks/frontier.py --name smollm2-135m-g256 --methods glass,glass-refresh-start-fade \
        --densities 0.4665,0.5,0.6,0.7 --prompts 32 --gen-tokens 256 --bench-tokens 256 --repeats 3

For densities 0.3, 0.5, 0.7 and 0.9 (``--densities``) on one machine:
1. fidelity: ``glass eval MODEL`` (Wikipedia test split, 8-token prompts) for griffin,
   glass-a, glass and glass-refresh;
2. speed: one ``glass bench MODEL --method griffin,glass,glass-refresh --json --raw`` at the
   same densities, the three methods side by side in the same rounds: griffin (uniform
   density per layer: the decode shapes of griffin and glass-a, whose steps differ only in
   which neurons are kept), glass (per-layer schedule) and glass-refresh (the schedule
   plus re-selections, whose time is spread over the steps);
3. the raw records go to ``benchmarks/results/frontier/NAME/`` (NAME is the model unless
   ``--name`` says otherwise; rendered into BENCHMARKS.md by ``<!-- render: frontier NAME -->``),
   and the plot, KL against speed-up with one line per method through its densities, to
   ``benchmarks/figures/frontier_NAME.png``.
Other ``--methods`` time their own decode shapes, each side by side with the rest.
Wrap it in ``flock /tmp/glass-heavy.lock`` on a shared machine: the speed runs need the cores.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "frontier"
DENSITIES = "0.3,0.5,0.7,0.9"
METHODS = ("griffin", "glass-a", "glass", "glass-refresh")
# the bench run whose decode shapes each method shares (records made under an earlier
# definition of a method carry the name the registry now gives that definition:
# glass-schedule-adaptive and later glass-schedule for the old default glass, glass-refresh-cumulative for
# the old glass-refresh)
SPEED_OF = {"griffin": "griffin", "glass-a": "griffin", "glass": "glass", "glass-refresh": "glass-refresh",
            "glass-schedule-adaptive": "glass-schedule-adaptive", "glass-refresh-cumulative": "glass-refresh-cumulative",
            "glass-stored-schedule": "glass-stored-schedule"}
STYLE = {"griffin": "tab:red", "glass-a": "tab:olive", "glass": "tab:green", "glass-refresh": "tab:blue",
         "glass-schedule-adaptive": "tab:purple", "glass-refresh-cumulative": "tab:cyan",
         "glass-refresh-start-fade": "tab:brown", "glass-schedule": "tab:pink", "glass-stored-schedule": "tab:gray"}
SHOWN = ("griffin", "glass-a", "glass-schedule-adaptive", "glass-schedule", "glass-stored-schedule", "glass",
         "glass-refresh-cumulative", "glass-refresh", "glass-refresh-start-fade")  # plot and table order


def glass(*args: str, stdout=None) -> None:
    cmd = [sys.executable, "-m", "glass_llm", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=stdout)


def round_speedups(record: dict) -> list[float]:
    """Per interleaved round: dense step / sparse step (mask refreshes spread over the steps)."""
    raw = record["raw"]
    sparse = raw[f"d={record['density']:g}"]

    def step(run: dict) -> float:  # as BenchRecord: dense-start steps and refreshes spread over the steps
        sparse = run["steps"] - run.get("dense_steps", 0)
        return ((run["median_step_s"] * sparse + run.get("dense_steps_s", 0.0) + run.get("refresh_s", 0.0))
                / max(1, run["steps"]))

    return [d["median_step_s"] / step(s) for d, s in zip(raw["dense"], sparse)]


def points(folder: Path) -> list[dict]:
    """One point per (method, density): KL (mean, 95% half-width) and speed-up (median,
    min, max over rounds)."""
    results = json.loads((folder / "results.json").read_text())
    bench = {(r["method"], r["density"]): r for r in json.loads((folder / "bench.json").read_text())}
    out = []
    for r in results:
        rec = bench.get((SPEED_OF.get(r["method"], r["method"]), r["density"]))
        if rec is None:
            continue
        s = sorted(round_speedups(rec))
        out.append({"method": r["method"], "density": r["density"], "kl": r["kl"], "kl_ci95": r["kl_ci95"],
                    "speedup": s[len(s) // 2], "speedup_min": s[0], "speedup_max": s[-1]})
    return out


def plot(pts: list[dict], model: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for method in SHOWN:
        ps = sorted((p for p in pts if p["method"] == method), key=lambda p: p["density"])
        if not ps:
            continue
        x = [p["speedup"] for p in ps]
        y = [p["kl"] for p in ps]
        xerr = [[p["speedup"] - p["speedup_min"] for p in ps], [p["speedup_max"] - p["speedup"] for p in ps]]
        yerr = [p["kl_ci95"] or 0.0 for p in ps]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", color=STYLE[method], label=method, capsize=2)
        for p in ps:
            ax.annotate(f"{p['density']:g}", (p["speedup"], p["kl"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=STYLE[method])
    ax.set_xlabel("decode speed-up over dense (measured, median of rounds)")
    ax.set_ylabel("KL(dense || method), mean per token")
    ax.set_yscale("log")
    ax.set_title(f"{model}: quality against speed, densities annotated")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def markdown(folder: Path) -> str:
    """The frontier table: per density and method, KL and measured speed-up."""
    pts = points(folder)
    settings = json.loads((folder / "settings.json").read_text())
    bench = json.loads((folder / "bench.json").read_text())[0]
    lines = [f"`{settings['model']}`, corpus `{settings['corpus']}` ({settings['split']} split), "
             f"P = {', '.join(map(str, settings['prompt_tokens']))}, G = {settings['gen_tokens']}, "
             f"{settings['n_prompts']} prompts; speed: batch 1, prompt {bench['prompt_tokens']} tokens, "
             f"{bench['gen_tokens']} new tokens, {bench['repeats']} interleaved rounds, {bench['threads']} threads, "
             f"{bench['dtype']}. KL: mean ± 95% half-width; speed-up: median (min-max) over rounds.", "",
             "| density | method | KL(dense‖m) | speed-up |", "|---:|---|---:|---:|"]
    for p in sorted(pts, key=lambda p: (-p["density"], SHOWN.index(p["method"]))):
        ci = f" ± {p['kl_ci95']:.3f}" if p["kl_ci95"] is not None else ""
        lines.append(f"| {p['density']:g} | {p['method']} | {p['kl']:.3f}{ci} | {p['speedup']:.2f} "
                     f"({p['speedup_min']:.2f}-{p['speedup_max']:.2f}) |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", default="16")
    p.add_argument("--gen-tokens", default="64")
    p.add_argument("--bench-tokens", default="64")
    p.add_argument("--repeats", default="5")
    p.add_argument("--methods", default=",".join(METHODS), help="methods scored and timed (default %(default)s)")
    p.add_argument("--densities", default=DENSITIES)
    p.add_argument("--name", help="records folder and figure name (default: the model)")
    p.add_argument("--out", default="runs/frontier")
    p.add_argument("--skip-eval", action="store_true", help="reuse a finished eval run in --out")
    p.add_argument("--plot-only", action="store_true", help="redraw the figure from the committed records")
    args = p.parse_args()
    name = args.name or args.model
    methods = [m for m in args.methods.split(",") if m]
    run = Path(args.out) / name
    dest = RESULTS / name
    figure = HERE / "figures" / f"frontier_{name}.png"
    if args.plot_only:
        plot(points(dest), args.model, figure)
        print(markdown(dest))
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    if not args.skip_eval:
        glass("eval", args.model, "--methods", ",".join(("dense", *methods)), "--density", args.densities,
              "--prompt-tokens", "8", "--prompts", args.prompts, "--gen-tokens", args.gen_tokens,
              "--corpus", "wikipedia", "--threads", "2", "--no-plots", "--out", str(run))
    for name in ("results.json", "records.csv", "settings.json"):
        shutil.copyfile(run / name, dest / name)
    with open(dest / "bench.json", "w") as f:
        speeds = ",".join(dict.fromkeys(SPEED_OF.get(m, m) for m in methods))
        glass("bench", args.model, "--method", speeds, "--density", args.densities,
              "--prompt-tokens", "16", "--gen-tokens", args.bench_tokens, "--repeats", args.repeats, "--json",
              "--raw", "--quiet", stdout=f)
    plot(points(dest), args.model, figure)
    print(markdown(dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
