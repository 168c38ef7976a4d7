"""Render BENCHMARKS.md from committed records and hand-written prose; never edit it by hand.

    python benchmarks/render.py            # rewrite BENCHMARKS.md
    python benchmarks/render.py --check    # exit 1 if BENCHMARKS.md differs from the rendering

BENCHMARKS.md is the prose fragments ``benchmarks/text/*.md`` in file-name order, joined
by one blank line. A fragment line of the form ``<!-- render: KIND ARG -->`` is replaced by
a table computed from the records under ``benchmarks/results/`` (or, for ``lm-eval``,
``benchmarks/lm_eval_results/``):

* ``<!-- render: speed MODEL -->``: the decode-speed table of ``results/speed-MODEL-*.json``
  (written by ``benchmarks/speed.py``). Ratios are taken per round (dense and sparse run
  side by side in one round) and quoted as median (min-max) over the rounds.
* ``<!-- render: fidelity NAME -->``: the tables of ``results/fidelity/NAME/``
  (``results.json`` from ``glass eval``, copied there by ``benchmarks/fidelity.py``) and,
  when the per-prompt ``records.csv`` is there, paired comparisons against GRIFFIN and
  against glass-a on the same prompts, with 95% t intervals. Without NAME: every run
  under ``results/fidelity/``, each under its own heading.
* ``<!-- render: lm-eval -->``: the accuracy tables of ``benchmarks/lm_eval_table.py``.
* ``<!-- render: prior-speed MODEL -->``: prior sampling against single-stream decode
  (``results/prior_speed-MODEL.json``, from ``benchmarks/prior_speed.py``).
* ``<!-- render: frontier MODEL -->``: KL against measured speed-up per density and method,
  from ``results/frontier/MODEL/`` (written by ``benchmarks/frontier.py``).
* ``<!-- render: decode-overhead -->``: the runtime's Python cost per decode step, one row per
  ``results/decode-overhead-MODEL.json`` (``benchmarks/decode_overhead.py``).
* ``<!-- render: demo-text MODEL -->``: repetition of greedy replies per method and density
  (``results/demo-text-MODEL.json``, from ``benchmarks/demo_text.py``).
* ``<!-- render: loop-guard MODEL -->``: collapsed greedy replies and speed with the loop guard
  (``results/loop-guard-MODEL.json``, from ``benchmarks/loop_guard.py``).
* ``<!-- render: lam-check -->``: the short-prompt lam check of each model's default prior, one
  row per ``results/lam-check-MODEL.json`` (``benchmarks/prior_checks.py``).
* ``<!-- render: greedy-gain -->``: per-block losses on greedy replies against the stored profile,
  and the allocations they give (``results/greedy-gain-MODEL.json``, ``benchmarks/greedy_gain.py``).
* ``<!-- render: reply-check -->``: the schedule of greedy replies of each model's default prior, one
  row per checked density of ``results/reply-check-MODEL.json`` (``benchmarks/prior_checks.py``).
* ``<!-- render: goals -->``: the product's selections against their fidelity goals, paired
  across the committed fidelity runs that score the same prompts (``benchmarks/goals.py``).

To add a section: commit its records under ``benchmarks/results/`` (small JSON/CSV), write
``benchmarks/text/NN-name.md`` (NN places it) with the prose and the directives above,
run this script and commit BENCHMARKS.md. A new kind of table is one function taking the
directive's argument and returning markdown, added to ``RENDERERS``.
``tests/test_render.py`` checks that the committed BENCHMARKS.md equals the rendering.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Callable

from glass_llm.evaluation.report import comparisons_markdown, paired_comparisons, read_records_csv, results_markdown
from glass_llm.intervals import spread
from glass_llm.io import atomic_write

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEXT = HERE / "text"
RESULTS = HERE / "results"
TARGET = ROOT / "BENCHMARKS.md"
DIRECTIVE = re.compile(r"^<!-- render: ([a-z-]+)(?: (\S+))? -->$")


class RenderError(ValueError):
    """A fragment or a record cannot be rendered."""


# speed ------------------------------------------------------------------------------


def _rounds(record: dict) -> list[dict]:
    """Per round: dense, FFN-skipped and sparse run of the same round, side by side."""
    raw = record["raw"]
    sparse = raw[f"d={record['density']:g}"]
    return [{"dense": d, "skip": s, "sparse": p} for d, s, p in zip(raw["dense"], raw["skip-ffn"], sparse)]


def speed_row(record: dict) -> list[str]:
    """One table row: per-round ratios as median (min-max) over the rounds."""
    d, b = record["density"], record["batch"]
    rounds = _rounds(record)

    def ratio(f: Callable[[dict], float]) -> str:
        return spread([f(r) for r in rounds]).format("{:.2f}")

    def ideal(r: dict) -> float:
        dense, skip = r["dense"]["median_step_s"], r["skip"]["median_step_s"]
        return dense / (skip + d * max(0.0, dense - skip))

    def speedup(r: dict) -> float:  # mask refreshes, if any, spread over the steps
        p = r["sparse"]
        return r["dense"]["median_step_s"] / (p["median_step_s"] + p.get("refresh_s", 0.0) / max(1, p.get("steps", 1)))

    rss = spread([r["sparse"]["peak_rss_mb"] for r in rounds])
    dense_rss = spread([r["dense"]["peak_rss_mb"] for r in rounds])
    return [str(b), "one" if b == 1 else "1 shared" if record["share_batch"] else "per row",
            record.get("weights", "float"), f"{d:g}", str(record["gen_tokens"]),
            str(len(rounds)),
            spread([b / r["dense"]["median_step_s"] for r in rounds]).format("{:.1f}"),
            spread([b / r["sparse"]["median_step_s"] for r in rounds]).format("{:.1f}"),
            ratio(speedup), ratio(ideal), spread([speedup(r) / ideal(r) for r in rounds]).format("{:.2f}"),
            ratio(lambda r: r["dense"]["total_s"] / r["sparse"]["total_s"]),
            spread([r["sparse"]["select_s"] * 1e3 for r in rounds]).format("{:.0f}"),
            f"{rss.min:.0f}-{rss.max:.0f} ({dense_rss.min:.0f}-{dense_rss.max:.0f})",
            f"{record['compact_weights_mb']:.0f}", f"{record['max_load_avg']:.1f}"]


SPEED_HEADER = ("batch", "sets", "weights", "density", "new tok", "rounds", "dense tok/s", "sparse tok/s", "speed-up", "ideal",
                "efficiency", "e2e speed-up", "selection ms", "peak RSS MB sparse (dense)", "compact MB", "load")


def render_speed(model: str | None) -> str:
    if not model:
        raise RenderError("the speed directive needs a model: <!-- render: speed MODEL -->")
    files = sorted(RESULTS.glob(f"speed-{model}-*.json"))
    if not files:
        raise RenderError(f"no speed records for {model!r} in {RESULTS} (run benchmarks/speed.py)")
    docs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    records = sorted((r for doc in docs for r in doc["records"]),
                     key=lambda r: (r.get("weights", "float") != "float", r["batch"], r["share_batch"], r["density"]))
    m = docs[0]["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, transformers {m['transformers']}, "
             f"{m['threads']} threads, {docs[0]['dtype']}; prompt {records[0]['prompt_tokens']} tokens, greedy. "
             "Cells: median (min-max) over rounds; speed-ups are ratios (dense step / sparse step).", "",
             "| " + " | ".join(SPEED_HEADER) + " |", "|" + "---|" * len(SPEED_HEADER)]
    lines += ["| " + " | ".join(speed_row(r)) + " |" for r in records]
    lines += ["", "Commands:", ""] + [f"    {doc['command']}" for doc in docs]
    return "\n".join(lines)


# fidelity ---------------------------------------------------------------------------


def _fidelity_run(folder: Path, heading: str) -> str:
    path = folder / "results.json"
    if not path.is_file():
        raise RenderError(f"no fidelity results at {path} (copy them with benchmarks/fidelity.py)")
    parts = [results_markdown(json.loads(path.read_text(encoding="utf-8")), heading=heading).rstrip()]
    records_path = folder / "records.csv"
    if records_path.is_file():
        records = read_records_csv(records_path.read_text(encoding="utf-8"))
        for baseline in ("griffin", "glass-a"):
            table = comparisons_markdown(paired_comparisons(records, baseline))
            if table:
                parts.append(f"{heading} Paired against {baseline} on the same prompts (95% t intervals; "
                             "* = the interval excludes no change)\n\n" + table.rstrip())
    return "\n\n".join(parts)


def render_fidelity(name: str | None) -> str:
    """One run's tables, or, without a name, every run under results/fidelity/ under its
    own heading (a note when none is committed)."""
    if name:
        return _fidelity_run(RESULTS / "fidelity" / name, "####")
    runs = sorted(p for p in (RESULTS / "fidelity").glob("*") if (p / "results.json").is_file())
    if not runs:
        return "No fidelity records are committed yet."
    return "\n\n".join(f"#### Run `{run.name}`\n\n" + _fidelity_run(run, "#####") for run in runs)


# lm-eval ----------------------------------------------------------------------------


def _script(name: str):
    """A module of benchmarks/ (a script, not a package) by file name."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_lm_eval(arg: str | None) -> str:
    return _script("lm_eval_table").markdown(HERE / (arg or "lm_eval_results")).rstrip()


# quality-speed frontier ---------------------------------------------------------------


def render_frontier(model: str | None) -> str:
    if not model:
        raise RenderError("the frontier directive needs a model: <!-- render: frontier MODEL -->")
    folder = RESULTS / "frontier" / model
    if not (folder / "results.json").is_file() or not (folder / "bench.json").is_file():
        raise RenderError(f"no frontier records for {model!r} in {folder} (run benchmarks/frontier.py)")
    return _script("frontier").markdown(folder).rstrip()


# prior sampling throughput --------------------------------------------------------------


def render_prior_speed(model: str | None) -> str:
    """The table of ``results/prior_speed-MODEL.json`` (``benchmarks/prior_speed.py``)."""
    path = RESULTS / f"prior_speed-{model}.json"
    if not model or not path.is_file():
        raise RenderError(f"no prior-speed record {path} (run benchmarks/prior_speed.py --model MODEL)")
    doc = json.loads(path.read_text(encoding="utf-8"))
    m, dec = doc["machine"], doc["decode_tok_s"]

    def cell(s: dict, fmt: str) -> str:
        return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"

    lines = [f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads; {dec['n']} rounds, each "
             f"a single-stream greedy decode of {doc['decode_tokens']} tokens ({cell(dec, '{:.1f}')} tok/s) and "
             "then one prior batch per shape. Cells: median (min-max) over rounds; the ratio is taken within "
             "each round.", "", "| shape (sequences x new tokens) | prior tok/s | prior / decode |", "|---|---:|---:|"]
    for shape, v in doc["shapes"].items():
        lines.append(f"| {shape} | {cell(v['tok_s'], '{:.0f}')} | {cell(v['ratio'], '{:.1f}')}x |")
    return "\n".join(lines)


# runtime overhead and greedy text -------------------------------------------------------


def render_decode_overhead(arg: str | None) -> str:
    """The rows of every ``results/decode-overhead-MODEL.json`` (``benchmarks/decode_overhead.py``)."""
    paths = sorted(RESULTS.glob("decode-overhead-*.json"))
    if not paths:
        raise RenderError("no decode-overhead records (run benchmarks/decode_overhead.py --model MODEL)")
    return _script("decode_overhead").markdown(paths)


def render_demo_text(model: str | None) -> str:
    """The repetition table of ``results/demo-text-MODEL.json`` (``benchmarks/demo_text.py``)."""
    path = RESULTS / f"demo-text-{model}.json"
    if not model or not path.is_file():
        raise RenderError(f"no demo-text record {path} (run benchmarks/demo_text.py --model MODEL)")
    return _script("demo_text").markdown(path)


def render_loop_guard(model: str | None) -> str:
    """The loop-guard table of ``results/loop-guard-MODEL.json`` (``benchmarks/loop_guard.py``)."""
    path = RESULTS / f"loop-guard-{model}.json"
    if not model or not path.is_file():
        raise RenderError(f"no loop-guard record {path} (run benchmarks/loop_guard.py --model MODEL)")
    return _script("loop_guard").markdown(path)


def per_model_records(kind: str, script: str, function: str = "markdown") -> Callable[[str | None], str]:
    """A renderer of every ``results/KIND-MODEL.json`` together, by ``benchmarks/SCRIPT.py``'s ``FUNCTION``."""
    def render_records(arg: str | None) -> str:
        paths = sorted(RESULTS.glob(f"{kind}-*.json"))
        if not paths:
            raise RenderError(f"no {kind} records (run benchmarks/{script}.py --model MODEL)")
        return getattr(_script(script), function)(paths)

    return render_records


def render_goals(arg: str | None) -> str:
    """The goal table of ``benchmarks/goals.py`` over every committed fidelity run."""
    try:
        return _script("goals").markdown(RESULTS / "fidelity").rstrip()
    except ValueError as err:
        raise RenderError(str(err)) from None


RENDERERS: dict[str, Callable[[str | None], str]] = {
    "speed": render_speed, "fidelity": render_fidelity, "lm-eval": render_lm_eval, "frontier": render_frontier,
    "prior-speed": render_prior_speed, "decode-overhead": render_decode_overhead, "demo-text": render_demo_text,
    "goals": render_goals, "loop-guard": render_loop_guard, "lam-check": per_model_records("lam-check", "prior_checks", "lam_markdown"),
    "greedy-gain": per_model_records("greedy-gain", "greedy_gain"),
    "reply-check": per_model_records("reply-check", "prior_checks", "reply_markdown"),
    "neighbours-check": per_model_records("neighbours-check", "prior_checks", "neighbours_markdown"),
}


def render(text_dir: Path = TEXT) -> str:
    """BENCHMARKS.md as it should read now."""
    fragments = sorted(text_dir.glob("*.md"))
    if not fragments:
        raise RenderError(f"no prose fragments in {text_dir}")
    out = []
    for path in fragments:
        lines = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = DIRECTIVE.match(line.strip())
            if m is None:
                lines.append(line)
                continue
            kind, arg = m.groups()
            if kind not in RENDERERS:
                raise RenderError(f"{path.name}:{n}: unknown table kind {kind!r}; known: {', '.join(RENDERERS)}")
            lines.append(RENDERERS[kind](arg))
        out.append("\n".join(lines).strip("\n") + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render BENCHMARKS.md from benchmarks/text and benchmarks/results.")
    p.add_argument("--check", action="store_true", help="only check that BENCHMARKS.md is up to date")
    args = p.parse_args(argv)
    try:
        text = render()
    except RenderError as err:
        print(f"render: error: {err}", file=sys.stderr)
        return 2
    if args.check:
        if TARGET.read_text(encoding="utf-8") != text:
            print("BENCHMARKS.md is out of date: run python benchmarks/render.py", file=sys.stderr)
            return 1
        return 0
    atomic_write(TARGET, text)
    print(f"wrote {TARGET}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
