"""Decode-speed benchmark: dense vs. GLASS-sliced generation, measured side by side.

One process runs every variant in interleaved rounds (dense, FFN-skipped, sparse at
each density, repeated), all with the same greedy ``model.generate`` call, so that
every figure is a ratio of runs taken under the same conditions.

Per run, a stopping criterion that never stops timestamps every generated token (after
synchronising the device), from outside the model's forward, so compiled decoding is timed
the same way:

* prefill: up to the first token, minus the selection;
* selection: the engine's work right after the prefill forward (rank, select, gather the
  compact weights), timed by the engine (``GlassHandle.select_s``);
* decode: from the first token to the last; it covers ``steps`` decode forwards and the
  generation loop around them. A step's time is the median interval between tokens.

The ideal: the same model with every FFN block replaced by a module that returns zeros
(restored afterwards) gives the decode step without FFN; the difference to the dense
step is the FFN time. Slicing to ``density`` can at best scale the FFN time by
``density``, so ``ideal step = skip + density * (dense - skip)`` and
``efficiency = achieved speed-up / ideal speed-up``.

Peak memory is the process's resident-set high-water mark (``VmHWM``), reset before
every run where the kernel allows it (``/proc/self/clear_refs``), and on a GPU the peak
allocated device memory (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from .adapters import find_ffn_blocks
from .engine import GlassConfig, GlassHandle, apply_glass

# A neutral English passage; prompts are windows of its tokens.
BENCH_TEXT = (
    "The harbour town woke slowly that morning. Fishermen carried their nets down to the water, "
    "gulls circled above the market stalls, and the baker opened his shutters to let the smell of "
    "fresh bread drift into the street. At the end of the pier an old lighthouse stood against the "
    "grey sky, its lamp dark for the day. Children ran along the sea wall, counting the boats that "
    "had returned overnight, while their parents argued about the price of mackerel and the chance "
    "of rain. A letter had arrived for the keeper of the lighthouse, sealed with blue wax, and the "
    "postmaster held it up to the light as if the envelope could tell him where it came from. "
    "Nobody in town had written to the keeper in twenty years, and everybody wanted to know why."
)


class BenchError(ValueError):
    """The benchmark cannot run with the given settings."""


# ---------------------------------------------------------------------------------
# prompts


def make_prompts(tokenizer, batch: int, prompt_tokens: int, text: str = BENCH_TEXT) -> torch.Tensor:
    """``batch`` prompts of exactly ``prompt_tokens`` tokens (no padding), each a different
    window of ``text``; returns input ids of shape (batch, prompt_tokens)."""
    if batch < 1 or prompt_tokens < 1:
        raise BenchError(f"batch and prompt tokens must be >= 1, got {batch} and {prompt_tokens}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    body = prompt_tokens - (1 if bos is not None else 0)
    rows = []
    for b in range(batch):
        start = (b * 7) % max(1, len(ids) - body)
        window = (ids * (1 + (start + body) // len(ids)))[start:start + body]
        rows.append(([bos] if bos is not None else []) + window)
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------------
# measurement helpers


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark (Linux); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Resident-set high-water mark in MiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    kb = _read_status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Timestamps the tokens of one ``generate`` call, from outside the model's forward.

    It is a stopping criterion that never stops: ``generate`` calls it once per new
    token, after the forward and the token choice, so it also works when the decode
    forward is compiled. The device is synchronised before every timestamp.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.end: list[float] = []

    def start(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        synchronize(self.device)
        self.end.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


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

    @property
    def mean_step_s(self) -> float:
        return self.decode_s / max(1, self.steps)


class _ZeroFFN(nn.Module):
    """Stands in for an FFN block while measuring the step time without FFN."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


@contextlib.contextmanager
def ffn_skipped(model: nn.Module) -> Iterator[None]:
    """Temporarily replace every FFN block of ``model`` by a zero-returning module."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for block in find_ffn_blocks(model):
            if not block.path:
                raise BenchError("the model itself is an FFN block; nothing to skip it in")
            parent_path, _, name = block.path.rpartition(".")
            parent = model.get_submodule(parent_path)
            swaps.append((parent, name, block.owner))
            setattr(parent, name, _ZeroFFN())
        yield
    finally:
        for parent, name, orig in reversed(swaps):
            setattr(parent, name, orig)


def _load_average() -> float:
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _compact_mb(handle: GlassHandle | None) -> float:
    if handle is None:
        return 0.0
    total = 0
    for st in handle.states:
        for t in st.compact_tensors():
            total += t.numel() * t.element_size()
    return total / 2**20


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def timed_generate(model: nn.Module, input_ids: torch.Tensor, gen_tokens: int, variant: str,
                   config: GlassConfig | None = None, prior=None,
                   generate_kwargs: dict | None = None) -> RunTiming:
    """Greedy-generate exactly ``gen_tokens`` tokens and time its phases.

    ``config`` None runs the model as it is (dense, or FFN-skipped inside ``ffn_skipped``).
    Prefill is the first token's time minus the selection (which runs right after the
    prefill forward and is timed by the engine); decode is from the first token to the last.
    """
    from transformers import StoppingCriteriaList

    device = _model_device(model)
    input_ids = input_ids.to(device)
    clock = StepClock(device)
    kwargs = dict(max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False,
                  attention_mask=torch.ones_like(input_ids), stopping_criteria=StoppingCriteriaList([clock]))
    kwargs.update(generate_kwargs or {})
    gc.collect()
    load = _load_average()
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    handle = None
    with torch.inference_mode():
        try:
            if config is not None:
                handle = apply_glass(model, config, prior=prior)
            t0 = clock.start()
            out = model.generate(input_ids, **kwargs)
            t1 = clock.start()
            compact = _compact_mb(handle)
            select_s = 0.0 if handle is None else handle.select_s
        finally:
            if handle is not None:
                handle.remove()
    new = out.shape[1] - input_ids.shape[1]
    if new != gen_tokens or len(clock.end) != gen_tokens:
        raise BenchError(f"{variant}: generated {new} tokens in {len(clock.end)} steps, expected {gen_tokens}")
    decode_s = clock.end[-1] - clock.end[0]
    intervals = [b - a for a, b in zip(clock.end, clock.end[1:])] or [decode_s]
    peak_dev = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return RunTiming(variant=variant, total_s=t1 - t0, prefill_s=clock.end[0] - t0 - select_s,
                     select_s=select_s, decode_s=decode_s, steps=len(clock.end) - 1,
                     peak_rss_mb=peak_rss_mb(), compact_mb=compact,
                     median_step_s=_median(intervals), load_before=load, peak_device_mb=peak_dev)


# ---------------------------------------------------------------------------------
# the suite


@dataclass
class BenchSettings:
    """What to run. ``densities`` are the fractions of FFN neurons kept while decoding."""

    densities: Sequence[float] = (0.25, 0.5, 0.75)
    gen_tokens: int = 256
    repeats: int = 3
    method: str = "glass"
    share_batch: bool = False
    warmup_tokens: int = 8


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
    raw: dict = field(default_factory=dict, repr=False)

    def to_json(self, with_raw: bool = False) -> dict:
        d = asdict(self)
        if not with_raw:
            d.pop("raw")
        return d


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _variants(settings: BenchSettings) -> list[tuple[str, GlassConfig | None, bool]]:
    out: list[tuple[str, GlassConfig | None, bool]] = [("dense", None, False), ("skip-ffn", None, True)]
    for d in settings.densities:
        out.append((f"d={d:g}", GlassConfig(method=settings.method, density=float(d),
                                              share_batch=settings.share_batch), False))
    return out


def run_rounds(model: nn.Module, input_ids: torch.Tensor, settings: BenchSettings, prior=None,
               generate_kwargs: dict | None = None, progress=None) -> dict[str, list[RunTiming]]:
    """Warm every variant up once, then run ``repeats`` interleaved rounds; returns the
    timings per variant name (the warm-up run, which pays any compilation, under
    ``NAME:warmup``)."""
    variants = _variants(settings)
    runs: dict[str, list[RunTiming]] = {name: [] for name, _, _ in variants}
    runs.update({f"{name}:warmup": [] for name, _, _ in variants})
    for rnd in range(-1, settings.repeats):
        n = settings.warmup_tokens if rnd < 0 else settings.gen_tokens
        for name, config, skip in variants:
            ctx = ffn_skipped(model) if skip else contextlib.nullcontext()
            with ctx:
                timing = timed_generate(model, input_ids, n, name, config, prior, generate_kwargs)
            runs[name if rnd >= 0 else f"{name}:warmup"].append(timing)
            if progress is not None:
                progress(f"round {rnd + 1}/{settings.repeats} {name}: {1e3 * timing.median_step_s:.1f} ms/step"
                         + (" (warm-up)" if rnd < 0 else ""))
    return runs


def linear_weight_bytes(model: nn.Module) -> tuple[int, list[int]]:
    """Bytes of weight a decode step reads: every Linear/Conv1D weight and bias (each
    storage counted once; an embedding lookup reads one row and is left out), and the
    part of it in each FFN block."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            for t in (module.weight, getattr(module, "bias", None)):
                if t is not None and t.untyped_storage().data_ptr() not in seen:
                    seen.add(t.untyped_storage().data_ptr())
                    total += t.numel() * t.element_size()
    ffn = []
    for block in find_ffn_blocks(model):
        ffn.append(sum(t.numel() * t.element_size() for m in (*block.input_modules, block.output_module)
                       for t in (m.weight, getattr(m, "bias", None)) if t is not None))
    return total, ffn


def summarize(runs: dict[str, list[RunTiming]], settings: BenchSettings, model_name: str, batch: int,
              prompt_tokens: int, dtype: str, weight_bytes: tuple[int, list[int]] | None = None,
              compiled: bool = False) -> list[BenchRecord]:
    """Turn the timings into one record per density.

    A decode step's time is the median of the run's per-step intervals (robust to other
    processes' bursts), then the median over rounds; the ``*_mean`` fields use the
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
    for d in settings.densities:
        name = f"d={d:g}"
        sp = runs[name]
        step = _median([r.median_step_s for r in sp])
        ideal_step = skip_step + float(d) * ffn
        speedup = dense_step / step
        ideal = dense_step / ideal_step
        sel = _median([r.select_s for r in sp])
        e2e = _median([r.total_s for r in sp])
        sparse_mean = _median([r.mean_step_s for r in sp])
        used = [*dense, *skip, *sp]
        dense_bytes = sparse_bytes = 0
        if weight_bytes is not None:
            dense_bytes, ffn_bytes = weight_bytes
            sparse_bytes = dense_bytes - sum(int((1.0 - float(d)) * b) for b in ffn_bytes)
        records.append(BenchRecord(
            model=model_name, density=float(d), batch=batch, method=settings.method,
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
            raw={n: [asdict(r) for r in runs[n]] for n in ("dense", "skip-ffn", name)},
        ))
    return records


def benchmark(model: nn.Module, input_ids: torch.Tensor, settings: BenchSettings, model_name: str = "model",
              prior=None, generate_kwargs: dict | None = None, progress=None) -> list[BenchRecord]:
    """Run the interleaved rounds for one batch of prompts and summarise them."""
    if settings.repeats < 1 or settings.gen_tokens < 2:
        raise BenchError("need repeats >= 1 and gen_tokens >= 2 (one prefill and at least one decode step)")
    if not settings.densities:
        raise BenchError("give at least one density")
    for d in settings.densities:
        if not 0.0 < float(d) < 1.0:
            raise BenchError(f"densities must be in (0, 1), got {d}")
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    runs = run_rounds(model, input_ids, settings, prior, generate_kwargs, progress)
    compiled = "compile_config" in (generate_kwargs or {})
    return summarize(runs, settings, model_name, int(input_ids.shape[0]), int(input_ids.shape[1]), dtype,
                     weight_bytes=linear_weight_bytes(model), compiled=compiled)


# ---------------------------------------------------------------------------------
# reporting


def machine_info() -> dict:
    """CPU model, core count, torch/transformers versions and threads, for the record."""
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
            "transformers": transformers.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def format_table(records: Sequence[BenchRecord]) -> str:
    """A plain-text table of the records."""
    head = (f"{'batch':>5} {'dens':>5} {'dense t/s':>9} {'sparse t/s':>10} {'speedup':>7} {'ideal':>6} "
            f"{'effic':>6} {'roof':>6} {'GB/s':>5} {'e2e':>6} {'sel ms':>7} {'sel/step':>8} {'ffn%':>5} "
            f"{'RSS MB':>7} {'+W MB':>6}")
    lines = [head]
    for r in records:
        lines.append(
            f"{r.batch:>5} {r.density:>5.2f} {r.dense_tok_s:>9.1f} {r.sparse_tok_s:>10.1f} {r.speedup:>6.2f}x "
            f"{r.ideal_speedup:>5.2f}x {r.efficiency:>6.3f} {r.roofline_speedup:>5.2f}x {r.sparse_gb_s:>5.1f} "
            f"{r.e2e_speedup:>5.2f}x {r.select_ms:>7.1f} {r.select_in_decode_steps:>8.2f} {100 * r.ffn_share:>4.0f}% "
            f"{r.peak_rss_mb:>7.0f} {r.compact_weights_mb:>6.1f}")
    return "\n".join(lines)
