"""Decode-speed suite: dense vs. GLASS-sliced decoding, side by side, per model.

    flock /tmp/glass-heavy.lock python benchmarks/speed.py            # full suite
    python benchmarks/speed.py --table                                # markdown from results

For each model it runs ``glass_llm.bench.benchmark`` (the library behind ``glass bench``)
for batch 1 at densities 0.25/0.5/0.75, then batch 4 and 16 at density 0.5 with one
neuron set per row and with one shared set per batch, and batch 1 at density 0.5 with int8
weights (``b1-int8``: dense, FFN-skipped and sparse all in int8), and writes
``benchmarks/results/speed-<model>-<case>.json`` with the machine, versions, threads,
dtype and the equivalent ``glass bench`` command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# (case name, batch, densities, gen tokens, repeats, share_batch, weights)
CASES = [
    ("b1", 1, (0.25, 0.5, 0.75), 256, 3, False, "float"),
    ("b4", 4, (0.5,), 64, 2, False, "float"),
    ("b4-shared", 4, (0.5,), 64, 2, True, "float"),
    ("b16", 16, (0.5,), 64, 2, False, "float"),
    ("b16-shared", 16, (0.5,), 64, 2, True, "float"),
    ("b1-int8", 1, (0.5,), 64, 3, False, "int8"),
]
METHOD = "glass"  # the sparse arm of every case


def command_for(model: str, batch: int, densities, gen: int, repeats: int, share: bool, weights: str = "float") -> str:
    dens = ",".join(f"{d:g}" for d in densities)
    cmd = (f"glass bench {model} --method {METHOD} --density {dens} --prompt-tokens 16 --gen-tokens {gen} "
           f"--repeats {repeats} --batch {batch}")
    return cmd + (" --share-batch" if share else "") + (" --weights int8" if weights == "int8" else "") + " --json"


def run_suite(models: list[str], cases: list[str], threads: int | None) -> None:
    import torch

    from glass_llm.bench import BenchSettings, benchmark, format_table, machine_info, make_prompts
    from glass_llm.build import get_or_build_prior
    from glass_llm.prior_cache import default_prior_path
    from glass_llm.models import load_model

    if threads:
        torch.set_num_threads(threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in models:
        model, tok = load_model(name)
        # the prior's contents do not change the decode speed: reuse the cached 8192-token
        # prior, or build a smaller one where none is cached yet
        tokens = 8192 if default_prior_path(name, "self", 8192).is_file() else 2048
        prior = get_or_build_prior(model, tok, name, n_tokens=tokens)
        for case, batch, dens, gen, repeats, share, weights in CASES:
            if cases and case not in cases:
                continue
            settings = BenchSettings(densities=dens, gen_tokens=gen, repeats=repeats, method=METHOD,
                                     share_batch=share, weights=weights)
            ids = make_prompts(tok, batch, 16)
            records = benchmark(model, ids, settings, model_name=name, prior=prior,
                                generate_kwargs={"pad_token_id": tok.pad_token_id},
                                progress=lambda m: print(f"[{name} {case}] {m}", file=sys.stderr, flush=True))
            out = {"machine": machine_info(), "dtype": "float32",
                   "command": "flock /tmp/glass-heavy.lock " + command_for(name, batch, dens, gen, repeats, share, weights),
                   "records": [r.to_json(with_raw=True) for r in records]}
            path = RESULTS / f"speed-{name}-{case}.json"
            path.write_text(json.dumps(out, indent=1))
            print(f"{name} {case}:\n{format_table(records)}\nwrote {path}", flush=True)


def markdown() -> str:
    """One table per model from the results files."""
    lines = []
    by_model: dict[str, list[tuple[str, dict, dict]]] = {}
    for path in sorted(RESULTS.glob("speed-*.json")):
        data = json.loads(path.read_text())
        for rec in data["records"]:
            by_model.setdefault(rec["model"], []).append((path.stem, rec, data))
    order = {c[0]: i for i, c in enumerate(CASES)}
    for model, rows in by_model.items():
        rows.sort(key=lambda r: (order.get(r[0].split(f"speed-{model}-")[-1], 99), r[1]["density"]))
        m = rows[0][2]["machine"]
        lines += [f"### {model}", "",
                  f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, transformers {m['transformers']}, "
                  f"{m['threads']} threads, {rows[0][2]['dtype']}; prompt 16 tokens, greedy.", "",
                  "| batch | sets | density | new tok | dense tok/s | sparse tok/s | speed-up | ideal | efficiency "
                  "| e2e speed-up | selection ms (steps) | FFN share | peak RSS MB (dense) | compact MB | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, r, _ in rows:
            sets = "1 shared" if (r["share_batch"] or r["batch"] == 1) else "per row"
            lines.append(
                f"| {r['batch']} | {sets} | {r['density']:g} | {r['gen_tokens']} | {r['dense_tok_s']:.1f} | "
                f"{r['sparse_tok_s']:.1f} | {r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['efficiency']:.2f} | "
                f"{r['e2e_speedup']:.2f}x | {r['select_ms']:.0f} ({r['select_in_decode_steps']:.1f}) | "
                f"{100 * r['ffn_share']:.0f}% | {r['peak_rss_mb']:.0f} ({r['dense_peak_rss_mb']:.0f}) | "
                f"{r['compact_weights_mb']:.0f} | {r['max_load_avg']:.1f} |")
        lines += ["", "Commands:", ""]
        for cmd in sorted({d["command"] for _, _, d in rows}, key=lambda c: (len(c), c)):
            lines.append(f"    {cmd}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2-135m,gemma3-270m")
    p.add_argument("--cases", default="", help=f"comma-separated subset of {', '.join(c[0] for c in CASES)}")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--table", action="store_true", help="print the markdown tables from the results and exit")
    args = p.parse_args(argv)
    if args.table:
        print(markdown())
        return 0
    run_suite([m for m in args.models.split(",") if m], [c for c in args.cases.split(",") if c], args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
