"""PNG plots of fidelity results (matplotlib, Agg canvas; no global backend change).

* ``fidelity_d{density}.png``: KL and perplexity against prompt length, per method;
* ``jaccard_layers_d{density}.png``: per-layer Jaccard with the oracle set, per method,
  one panel per prompt length (the paper's figure 1);
* ``kl_vs_lam_d{density}.png``: KL against lam for the tunable methods, with GRIFFIN
  (lam = 1) and the global-only selection (lam = 0) as the end points.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

from .evaluation.report import method_label
from .io import atomic_write
from .methods import get_method

_STYLE = {"dense": ("black", "-"), "griffin": ("tab:red", "-"), "global": ("tab:blue", "-"),
          "magnitude": ("tab:gray", "--"), "random": ("tab:brown", ":"), "glass": ("tab:green", "-"),
          "glass-a": ("tab:green", "-"), "glass-i": ("tab:olive", "-"), "oracle": ("tab:purple", "--")}


def _figure(ncols: int, width: float = 5.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=90)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return atomic_write(path, buf.getvalue())


def _tunable(method: str) -> bool:
    return method != "oracle" and get_method(method).lam is None


def _series(results: Sequence[dict]) -> dict[str, list[dict]]:
    """Results grouped by display label (tunable methods: one series per lam)."""
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(method_label(r["method"], r["lam"]), []).append(r)
    return out


def _style(label: str) -> tuple[str, str]:
    return _STYLE.get(label.split(" ")[0], ("tab:cyan", "-"))


def plot_vs_prompt(results: Sequence[dict], density: float, path: Path) -> Path:
    rows = [r for r in results if r["density"] == density]
    fig, (ax_kl, ax_ppl) = _figure(2)
    for label, rs in _series(rows).items():
        rs = sorted(rs, key=lambda r: r["prompt_tokens"])
        x = [r["prompt_tokens"] for r in rs]
        color, ls = _style(label)
        if label != "dense":  # KL is 0 for dense: nothing to show on a log axis
            kl = [r["kl"] for r in rs]
            half = [r["kl_ci95"] or 0.0 for r in rs]  # None: a single prompt, no interval
            low = [min(h, 0.95 * k) for h, k in zip(half, kl)]  # keep the bars above 0 on the log axis
            ax_kl.errorbar(x, kl, yerr=[low, half], label=label, color=color,
                           linestyle=ls, marker="o", capsize=3)
        ax_ppl.plot(x, [r["ppl"] for r in rs], label=label, color=color, linestyle=ls, marker="o")
    model = rows[0]["model"] if rows else ""
    for ax, name in ((ax_kl, "KL(dense || method) per token (95% CI)"), (ax_ppl, "perplexity of the dense reference")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(name)
        ax.set_title(f"{model}, density {density:g}")
        ax.grid(alpha=0.3)
    ax_ppl.set_yscale("log")
    if any(r["kl"] > 0 for r in rows if r["method"] != "dense"):  # all-zero KL (density 1) stays linear
        ax_kl.set_yscale("log")
    ax_kl.legend(fontsize=7)
    ax_ppl.legend(fontsize=7)
    return _save(fig, path)


def plot_jaccard_layers(results: Sequence[dict], density: float, path: Path) -> Path:
    rows = [r for r in results if r["density"] == density and r["jaccard"] is not None]
    Ps = sorted({r["prompt_tokens"] for r in rows})
    fig, axes = _figure(max(1, len(Ps)), width=4.2)
    for ax, P in zip(axes, Ps):
        for label, rs in _series([r for r in rows if r["prompt_tokens"] == P]).items():
            color, ls = _style(label)
            jac = rs[0]["jaccard"]
            ax.plot(range(len(jac)), jac, label=label, color=color, linestyle=ls)
        ax.set_title(f"P={P}, density {density:g}")
        ax.set_xlabel("layer")
        ax.set_ylabel("Jaccard with oracle set")
        ax.grid(alpha=0.3)
    if axes and rows:
        axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_kl_vs_lam(results: Sequence[dict], density: float, path: Path) -> Path | None:
    rows = [r for r in results if r["density"] == density]
    tunable = sorted({r["method"] for r in rows if _tunable(r["method"])})
    if not tunable:
        return None
    Ps = sorted({r["prompt_tokens"] for r in rows})
    fig, axes = _figure(len(tunable), width=4.8)
    for ax, method in zip(axes, tunable):
        stat = get_method(method).statistic
        for j, P in enumerate(Ps):
            pts = {r["lam"]: r["kl"] for r in rows if r["method"] == method and r["prompt_tokens"] == P}
            # the activation end points are GRIFFIN (lam 1) and the global prior alone (lam 0)
            if stat == "activation":
                for end in ("griffin", "global"):
                    for r in rows:
                        if r["method"] == end and r["prompt_tokens"] == P:
                            pts.setdefault(r["lam"], r["kl"])
            lams = sorted(pts)
            ax.plot(lams, [pts[x] for x in lams], marker="o", label=f"P={P}", color=f"C{j}")
        ax.set_xlabel("lam (weight of the prompt ranking)")
        ax.set_ylabel("KL(dense || method) per token")
        ax.set_title(f"{method}, density {density:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_plots(results: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """All plots for every density in ``results``; returns the files written."""
    out = Path(out_dir)
    written: list[Path] = []
    for density in sorted({r["density"] for r in results}):
        tag = f"d{density:g}"
        written.append(plot_vs_prompt(results, density, out / f"fidelity_{tag}.png"))
        written.append(plot_jaccard_layers(results, density, out / f"jaccard_layers_{tag}.png"))
        lam_plot = plot_kl_vs_lam(results, density, out / f"kl_vs_lam_{tag}.png")
        if lam_plot is not None:
            written.append(lam_plot)
    return written
