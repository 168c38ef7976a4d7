"""From per-prompt records to reported numbers: aggregation with Student-t intervals,
paired comparisons between methods on the same prompts, CSV and markdown tables, and
the one place where a method run gets its display label.

Pure functions of the records (no model): ``benchmarks/render.py`` uses them on the
records committed under ``benchmarks/results/``.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Sequence

from ..intervals import Interval, mean_ci, paired_diff
from ..methods import DEFAULT_LAM, get_method
from .plan import ORACLE

RECORD_FIELDS = ("item", "doc", "prompt_tokens", "method", "density", "lam", "statistic", "nll", "kl",
                 "jaccard_mean", "positions")
CSV_FIELDS = ("model", "corpus", "split", "method", "statistic", "density", "lam", "prompt_tokens", "gen_tokens",
              "n_prompts", "ppl", "ppl_ci95_low", "ppl_ci95_high", "kl", "kl_ci95", "jaccard_mean", "jaccard")


def method_label(method: str, lam: float) -> str:
    """``griffin``, ``oracle``, or ``glass-a (lam 0.5)`` for a method whose lam is tunable.
    An adaptive method sets its lams from the prior's calibration (``glass-prompt-lam`` from the
    prompt's length), where ``lam`` only tilts them (0.5 keeps them): it is labelled ``glass (tilt 0.7)`` when tilted."""
    if method == ORACLE:
        return method
    try:
        spec = get_method(method)
    except ValueError:  # a record from a method this version does not register
        return f"{method} (lam {lam:g})"
    if spec.lam is not None:
        return method
    if spec.tilts_lam:
        return method if lam == DEFAULT_LAM else f"{method} (tilt {lam:g})"
    return f"{method} (lam {lam:g})"


def _half(ci: Interval) -> float | None:
    return None if math.isnan(ci.half) else ci.half


def aggregate(records: Sequence[dict], settings, extra: dict | None = None) -> list[dict]:
    """One result per (method, density, lam, prompt length), in a fixed order.

    ppl = exp(mean over prompts of the per-prompt mean NLL), with the 95% interval of
    that mean mapped through exp; kl = mean over prompts of the per-prompt mean KL, with
    the half-width of its 95% interval (``None`` with a single prompt); jaccard =
    per-layer mean over prompts.
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["method"], rec["density"], rec["lam"], rec["prompt_tokens"]), []).append(rec)
    order = {m: i for i, m in enumerate(settings.methods)}
    results = []
    for key in sorted(groups, key=lambda k: (k[1], k[3], order.get(k[0], 99), k[2])):
        method, density, lam, P = key
        recs = sorted(groups[key], key=lambda r: (r["item"], r["doc"]))
        nll = mean_ci([r["nll"] for r in recs])
        kl = mean_ci([r["kl"] for r in recs])
        jac = None
        if recs[0]["jaccard"] is not None:
            layers = len(recs[0]["jaccard"])
            jac = [sum(r["jaccard"][i] for r in recs) / len(recs) for i in range(layers)]
        ppl_ci = None if math.isnan(nll.half) else [math.exp(nll.low), math.exp(nll.high)]
        results.append({
            "model": settings.model, "corpus": settings.corpus, "split": settings.split, "method": method,
            "statistic": recs[0]["statistic"], "density": density, "lam": lam, "prompt_tokens": P,
            "gen_tokens": settings.gen_tokens, "n_prompts": len(recs),
            "ppl": math.exp(nll.mean), "ppl_ci95": ppl_ci, "nll": nll.mean, "kl": kl.mean, "kl_ci95": _half(kl),
            "jaccard_mean": None if jac is None else sum(jac) / len(jac), "jaccard": jac,
            **(extra or {}),
        })
    return results


def paired_comparisons(records: Sequence[dict], baseline: str) -> list[dict]:
    """Every method run against ``baseline`` on the same prompts, per density and prompt
    length: the perplexity ratio (exp of the mean per-prompt NLL difference) and the mean
    per-prompt KL difference, each with its 95% interval. Only prompts that both runs
    scored are paired; dense and the baseline itself are skipped."""
    base: dict[tuple, dict] = {}
    runs: dict[tuple, dict[tuple, dict]] = {}
    for r in records:
        prompt = (r["prompt_tokens"], r["doc"])
        if r["method"] == baseline:
            base[(r["density"], *prompt)] = r
        elif r["method"] != "dense":
            runs.setdefault((r["density"], r["prompt_tokens"], r["method"], r["lam"]), {})[prompt] = r
    out = []
    for (density, P, method, lam), by_prompt in sorted(runs.items(), key=lambda kv: kv[0][:2]):
        pairs = [(r, base[(density, *prompt)]) for prompt, r in sorted(by_prompt.items())
                 if (density, *prompt) in base]
        if len(pairs) < 2:
            continue
        kl = paired_diff([a["kl"] for a, _ in pairs], [b["kl"] for _, b in pairs])
        base_kl = sum(b["kl"] for _, b in pairs) / len(pairs)
        out.append({"method": method, "label": method_label(method, lam), "lam": lam, "density": density,
                    "prompt_tokens": P, "baseline": baseline, "n": len(pairs),
                    "ppl_ratio": paired_diff([a["nll"] for a, _ in pairs], [b["nll"] for _, b in pairs]).exp(),
                    "kl_diff": kl, "kl_rel": kl.mean / base_kl if base_kl > 0 else math.nan})
    return out


def _csv(rows: Sequence[dict], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def results_csv(results: Sequence[dict]) -> str:
    rows = []
    for r in results:
        row = dict(r)
        row["ppl_ci95_low"], row["ppl_ci95_high"] = r["ppl_ci95"] or ("", "")
        row["kl_ci95"] = "" if r["kl_ci95"] is None else r["kl_ci95"]
        row["jaccard"] = "" if r["jaccard"] is None else ";".join(f"{x:.4f}" for x in r["jaccard"])
        row["jaccard_mean"] = "" if r["jaccard_mean"] is None else r["jaccard_mean"]
        rows.append(row)
    return _csv(rows, CSV_FIELDS)


def records_csv(records: Sequence[dict]) -> str:
    """Per-prompt records, one row each (per-layer Jaccard reduced to its mean): the raw
    data behind every table, small enough to commit."""
    rows = [{**r, "jaccard_mean": "" if r["jaccard"] is None else sum(r["jaccard"]) / len(r["jaccard"])}
            for r in records]
    return _csv(rows, RECORD_FIELDS)


def read_records_csv(text: str) -> list[dict]:
    """The records written by :func:`records_csv`, with numbers parsed back."""
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        out.append({"item": row["item"], "doc": int(row["doc"]), "prompt_tokens": int(row["prompt_tokens"]),
                    "method": row["method"], "density": float(row["density"]), "lam": float(row["lam"]),
                    "statistic": row["statistic"], "nll": float(row["nll"]), "kl": float(row["kl"]),
                    "jaccard_mean": float(row["jaccard_mean"]) if row["jaccard_mean"] else None,
                    "positions": int(row["positions"])})
    return out


def _fmt_kl(r: dict) -> str:
    return f"{r['kl']:.3f}" + ("" if r["kl_ci95"] is None else f" ± {r['kl_ci95']:.3f}")


def results_markdown(results: Sequence[dict], title: str | None = None, heading: str = "###") -> str:
    """Per density: one table per measure (rows = method runs, columns = prompt lengths)."""
    if not results:
        return "(no results)\n"
    lines = [f"# {title}", ""] if title else []
    first = results[0]
    counts = sorted({r["n_prompts"] for r in results})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    guard = (f", loop guard {first['loop_guard']} (a step whose input completes a repeated 4-gram, and the next "
             f"{first['loop_guard'] - 1}, dense)") if first.get("loop_guard") else ""
    lines += [f"Model `{first['model']}`, corpus `{first['corpus']}` ({first['split']} split), "
              f"{first['gen_tokens']} generated tokens, {n} prompts per cell{guard}.", ""]
    for density in sorted({r["density"] for r in results}):
        rows = [r for r in results if r["density"] == density]
        Ps = sorted({r["prompt_tokens"] for r in rows})
        cell = {(method_label(r["method"], r["lam"]), r["prompt_tokens"]): r for r in rows}
        labels = list(dict.fromkeys(lab for lab, _ in cell))
        for name, fmt in (("KL(dense || method) per token, mean ± 95% CI", _fmt_kl),
                          ("Perplexity of the dense reference", lambda r: f"{r['ppl']:.3f}"),
                          ("Jaccard with the oracle set (mean over layers)",
                           lambda r: "-" if r["jaccard_mean"] is None else f"{r['jaccard_mean']:.3f}")):
            lines += [f"{heading} Density {density:g}: {name}", "",
                      "| method | " + " | ".join(f"P={P}" for P in Ps) + " |",
                      "|---|" + "---:|" * len(Ps)]
            for lab in labels:
                vals = [fmt(cell[(lab, P)]) if (lab, P) in cell else "" for P in Ps]
                lines.append(f"| {lab} | " + " | ".join(vals) + " |")
            lines.append("")
    return "\n".join(lines)


def comparisons_markdown(comparisons: Sequence[dict]) -> str:
    """A table of :func:`paired_comparisons`; a change is marked with * only where its
    95% interval excludes no change."""
    if not comparisons:
        return ""
    base = comparisons[0]["baseline"]
    lines = [f"| density | P | method | n | ppl / {base} (95% CI) | KL - {base} (95% CI) | KL change |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for c in comparisons:
        ppl, kl = c["ppl_ratio"], c["kl_diff"]
        lines.append(f"| {c['density']:g} | {c['prompt_tokens']} | {c['label']} | {c['n']} "
                     f"| {ppl.mean:.3f} [{ppl.low:.3f}, {ppl.high:.3f}]{'*' if ppl.low > 1 or ppl.high < 1 else ''} "
                     f"| {kl.mean:+.3f} [{kl.low:+.3f}, {kl.high:+.3f}]{'*' if kl.excludes_zero else ''} "
                     f"| {100 * c['kl_rel']:+.1f}% |")
    return "\n".join(lines) + "\n"
