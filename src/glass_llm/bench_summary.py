"""The figures of a decode-speed benchmark: records, their summary and a plain table.

``glass_llm.bench`` runs the interleaved rounds and times them; this module turns the
timings into one ``BenchRecord`` per density (speed-ups, the skip-FFN ideal, the
bandwidth roofline, selection cost, memory) and formats them. Pure arithmetic on the
timings, tested on synthetic ones.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .adapters import find_ffn_blocks
from .memory import huge_pages_active

@dataclass
class RunTiming:
    """One ``generate`` call."""

    variant: str
    total_s: float
    prefill_s: float
    select_s: float
    decode_s: float
    steps: int
    peak_rss_mb: float
    compact_mb: float = 0.0
    median_step_s: float = 0.0
    load_before: float = 0.0
    peak_device_mb: float = 0.0
    refreshes: int = 0  # mask refreshes during the decode, and their total wall time
    refresh_s: float = 0.0
    dense_steps: int = 0  # decode steps of a dense start (before the first selection), and their time
    dense_steps_s: float = 0.0

    @property
    def mean_step_s(self) -> float:
        return self.decode_s / max(1, self.steps)

    @property
    def step_s(self) -> float:
        """The typical decode step: the median interval of the sparse steps, with the mask
        refreshes (one step every R, which the median leaves out) and the dense start's
        steps counted in, averaged over every step."""
        sparse = max(0, self.steps - self.dense_steps)
        return (self.median_step_s * sparse + self.dense_steps_s + self.refresh_s) / max(1, self.steps)


@dataclass
class BenchSettings:
    """What to run. ``densities`` are the fractions of FFN neurons kept while decoding.
    ``methods`` (when given, in place of ``method``) are timed side by side in the same
    rounds, each at every density, against the same dense and FFN-skipped runs.
    ``weights`` "int8" runs every variant (dense and FFN-skipped too) with int8 weights."""

    densities: Sequence[float] = (0.25, 0.5, 0.75)
    gen_tokens: int = 256
    repeats: int = 3
    method: str = "glass"
    share_batch: bool = False
    warmup_tokens: int = 8
    refresh: int | None = None  # None: the method's own setting
    refresh_growth: float | None = None  # None: the method's own setting
    refresh_halflife: float | None = None  # None: the method's own setting
    schedule_halflife: float | None = None  # None: the method's own setting
    comp_tokens: float | None = None  # None: the method's own setting
    dense_start: int | None = None  # None: the method's own setting
    linear_blocks: int | None = None  # None: the method's own setting
    methods: tuple[str, ...] = ()
    weights: str = "float"

    @property
    def method_list(self) -> tuple[str, ...]:
        return tuple(self.methods) or (self.method,)

    def variant(self, method: str, density: float) -> str:
        """The run name of ``method`` at ``density``: ``d=0.5``, or ``glass d=0.5`` when
        several methods share the rounds."""
        return f"d={density:g}" if len(self.method_list) == 1 else f"{method} d={density:g}"


@dataclass
class BenchRecord:
    """One (batch, density) line of the benchmark; ratios compare runs of the same rounds."""

    model: str
    density: float
    batch: int
    method: str
    share_batch: bool
    prompt_tokens: int
    gen_tokens: int
    repeats: int
    threads: int
    dtype: str
    dense_tok_s: float
    sparse_tok_s: float
    speedup: float
    ideal_speedup: float
    efficiency: float
    e2e_speedup: float
    select_ms: float
    select_in_decode_steps: float
    peak_rss_mb: float
    dense_peak_rss_mb: float
    peak_device_mb: float
    dense_peak_device_mb: float
    compact_weights_mb: float
    ffn_share: float
    dense_step_ms: float
    sparse_step_ms: float
    skip_ffn_step_ms: float
    dense_e2e_s: float
    sparse_e2e_s: float
    prefill_ms: float
    dense_tok_s_mean: float
    sparse_tok_s_mean: float
    speedup_mean: float
    max_load_avg: float
    dense_weight_mb: float = 0.0
    sparse_weight_mb: float = 0.0
    roofline_speedup: float = 0.0
    dense_gb_s: float = 0.0
    sparse_gb_s: float = 0.0
    compiled: bool = False
    warmup_s: float = 0.0
    dense_warmup_s: float = 0.0
    refreshes: float = 0.0
    refresh_ms: float = 0.0
    refresh_in_decode_steps: float = 0.0
    dense_start_steps: float = 0.0
    weights: str = "float"
    raw: dict = field(default_factory=dict, repr=False)

    def to_json(self, with_raw: bool = False) -> dict:
        d = asdict(self)
        if not with_raw:
            d.pop("raw")
        return d


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _tensor_bytes(t: torch.Tensor, weights: str, is_weight: bool) -> int:
    """Bytes of ``t`` as a decode step reads it: an int8 weight is one byte per entry plus
    one scale per row; everything else as stored."""
    if weights == "int8" and is_weight:
        return t.numel() + t.shape[0] * t.element_size()
    return t.numel() * t.element_size()


def linear_weight_bytes(model: nn.Module, weights: str = "float") -> tuple[int, list[int]]:
    """Bytes of weight a decode step reads: every Linear/Conv1D weight and bias (each
    storage counted once; an embedding lookup reads one row and is left out), and the
    part of it in each FFN block; ``weights`` "int8" counts the float model's weights as
    their int8 copies would be."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            for t, is_weight in ((module.weight, True), (getattr(module, "bias", None), False)):
                if t is not None and (weights == "int8" or t.untyped_storage().data_ptr() not in seen):
                    seen.add(t.untyped_storage().data_ptr())
                    total += _tensor_bytes(t, weights, is_weight)
    ffn = []
    for block in find_ffn_blocks(model):
        ffn.append(sum(_tensor_bytes(t, weights, w) for m in (*block.input_modules, block.output_module)
                       for t, w in ((m.weight, True), (getattr(m, "bias", None), False)) if t is not None))
    return total, ffn


def summarize(runs: dict[str, list[RunTiming]], settings: BenchSettings, model_name: str, batch: int,
              prompt_tokens: int, dtype: str, weight_bytes: tuple[int, list[int]] | None = None,
              compiled: bool = False) -> list[BenchRecord]:
    """Turn the timings into one record per density.

    A decode step's time is the median of the run's per-step intervals (robust to other
    processes' bursts), with the run's mask refreshes and dense-start steps counted in
    (``RunTiming.step_s``), then the median over rounds; the skip-FFN ideal counts the
    dense-start steps as dense ones; the ``*_mean`` fields use the
    run's total decode time instead. End-to-end times are whole ``generate`` calls.
    ``weight_bytes`` (from :func:`linear_weight_bytes`) adds the memory-bandwidth view:
    bytes of weight read per step, dense and sparse, the roofline speed-up (their ratio:
    what a step bound by weight reads alone would gain) and the achieved GB/s.
    """
    dense, skip = runs["dense"], runs["skip-ffn"]
    dense_step = _median([r.median_step_s for r in dense])
    skip_step = _median([r.median_step_s for r in skip])
    ffn = max(0.0, dense_step - skip_step)
    dense_mean = _median([r.mean_step_s for r in dense])
    dense_e2e = _median([r.total_s for r in dense])
    records = []
    for method, d in [(m, d) for m in settings.method_list for d in settings.densities]:
        name = settings.variant(method, d)
        sp = runs[name]
        step = _median([r.step_s for r in sp])
        steps = _median([r.steps for r in sp])
        dense_steps = _median([r.dense_steps for r in sp])
        ideal_step = ((steps - dense_steps) * (skip_step + float(d) * ffn) + dense_steps * dense_step) / max(1, steps)
        speedup = dense_step / step
        ideal = dense_step / ideal_step
        sel = _median([r.select_s for r in sp])
        n_refresh = _median([r.refreshes for r in sp])
        per_refresh = _median([r.refresh_s / r.refreshes for r in sp if r.refreshes] or [0.0])
        e2e = _median([r.total_s for r in sp])
        sparse_mean = _median([r.mean_step_s for r in sp])
        used = [*dense, *skip, *sp]
        dense_bytes = sparse_bytes = 0
        if weight_bytes is not None:
            dense_bytes, ffn_bytes = weight_bytes
            sparse_bytes = dense_bytes - sum(int((1.0 - float(d)) * b) for b in ffn_bytes)
        records.append(BenchRecord(
            model=model_name, density=float(d), batch=batch, method=method,
            share_batch=settings.share_batch, prompt_tokens=prompt_tokens, gen_tokens=settings.gen_tokens,
            repeats=settings.repeats, threads=torch.get_num_threads(), dtype=dtype,
            dense_tok_s=batch / dense_step, sparse_tok_s=batch / step, speedup=speedup,
            ideal_speedup=ideal, efficiency=speedup / ideal, e2e_speedup=dense_e2e / e2e,
            select_ms=sel * 1e3, select_in_decode_steps=sel / dense_step,
            peak_rss_mb=max(r.peak_rss_mb for r in sp), dense_peak_rss_mb=max(r.peak_rss_mb for r in dense),
            peak_device_mb=max(r.peak_device_mb for r in sp),
            dense_peak_device_mb=max(r.peak_device_mb for r in dense),
            compact_weights_mb=_median([r.compact_mb for r in sp]), ffn_share=ffn / dense_step,
            dense_step_ms=dense_step * 1e3, sparse_step_ms=step * 1e3, skip_ffn_step_ms=skip_step * 1e3,
            dense_e2e_s=dense_e2e, sparse_e2e_s=e2e, prefill_ms=_median([r.prefill_s for r in dense]) * 1e3,
            dense_tok_s_mean=batch / dense_mean, sparse_tok_s_mean=batch / sparse_mean,
            speedup_mean=dense_mean / sparse_mean, max_load_avg=max(r.load_before for r in used),
            dense_weight_mb=dense_bytes / 2**20, sparse_weight_mb=sparse_bytes / 2**20,
            roofline_speedup=dense_bytes / sparse_bytes if sparse_bytes else 0.0,
            dense_gb_s=dense_bytes / dense_step / 1e9, sparse_gb_s=sparse_bytes / step / 1e9,
            compiled=compiled, warmup_s=_median([r.total_s for r in runs.get(f"{name}:warmup", [])] or [0.0]),
            dense_warmup_s=_median([r.total_s for r in runs.get("dense:warmup", [])] or [0.0]),
            refreshes=n_refresh, refresh_ms=per_refresh * 1e3, refresh_in_decode_steps=per_refresh / dense_step,
            dense_start_steps=dense_steps, weights=settings.weights,
            raw={"dense": [asdict(r) for r in dense], "skip-ffn": [asdict(r) for r in skip],
                 f"d={d:g}": [asdict(r) for r in sp]},
        ))
    return records


# ---------------------------------------------------------------------------------
# reporting


def machine_info() -> dict:
    """CPU model, core count, torch/transformers versions, threads and whether large CPU tensors get
    huge pages (``memory.huge_pages_active``), for the record."""
    import os
    import platform

    import transformers

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "huge_pages": huge_pages_active()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def format_table(records: Sequence[BenchRecord]) -> str:
    """A plain-text table of the records (a method column when several methods ran)."""
    several = len({r.method for r in records}) > 1
    lead = (lambda text: f"{text:<14} ") if several else (lambda text: "")
    head = (f"{lead('method')}{'batch':>5} {'dens':>5} {'dense t/s':>9} {'sparse t/s':>10} {'speedup':>7} "
            f"{'ideal':>6} {'effic':>6} {'roof':>6} {'GB/s':>5} {'e2e':>6} {'sel ms':>7} {'sel/step':>8} "
            f"{'ffn%':>5} {'RSS MB':>7} {'+W MB':>6}")
    lines = [head]
    for r in records:
        lines.append(
            f"{lead(r.method)}{r.batch:>5} {r.density:>5.2f} {r.dense_tok_s:>9.1f} {r.sparse_tok_s:>10.1f} "
            f"{r.speedup:>6.2f}x {r.ideal_speedup:>5.2f}x {r.efficiency:>6.3f} {r.roofline_speedup:>5.2f}x "
            f"{r.sparse_gb_s:>5.1f} {r.e2e_speedup:>5.2f}x {r.select_ms:>7.1f} {r.select_in_decode_steps:>8.2f} "
            f"{100 * r.ffn_share:>4.0f}% {r.peak_rss_mb:>7.0f} {r.compact_weights_mb:>6.1f}")
    for r in records:
        if r.refreshes:
            lines.append(f"{r.method}, batch {r.batch}, density {r.density:g}: {r.refreshes:g} mask refreshes per "
                         f"run, {r.refresh_ms:.1f} ms each = {r.refresh_in_decode_steps:.2f} dense steps "
                         "(spread over the steps in sparse t/s)")
        if r.dense_start_steps:
            lines.append(f"{r.method}, batch {r.batch}, density {r.density:g}: the first {r.dense_start_steps:g} "
                         "decode steps dense (a dense start, counted in sparse t/s and the ideal)")
    return "\n".join(lines)
