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
import time
from typing import Iterator

import torch
from torch import nn

from .adapters import find_ffn_blocks
from .bench_summary import (  # noqa: F401  (the summary is part of this module's API)
    BenchRecord,
    BenchSettings,
    RunTiming,
    format_table,
    linear_weight_bytes,
    machine_info,
    summarize,
)
from .bench_summary import _median
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


@contextlib.contextmanager
def _skipped_with(model: nn.Module, config: GlassConfig | None) -> Iterator[None]:
    """FFN blocks skipped in ``model`` with ``config`` applied first (int8 weights for the
    other projections), or as it is when ``config`` is None."""
    handle = apply_glass(model, config) if config is not None else None
    try:
        with ffn_skipped(model):
            yield
    finally:
        if handle is not None:
            handle.remove()


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
            refreshes, refresh_s = (0, 0.0) if handle is None else (handle.refreshes, handle.refresh_s)
            dense_steps = 0 if handle is None or not handle.active else min(handle.dense_start, gen_tokens - 1)
        finally:
            if handle is not None:
                handle.remove()
    new = out.shape[1] - input_ids.shape[1]
    if new != gen_tokens or len(clock.end) != gen_tokens:
        raise BenchError(f"{variant}: generated {new} tokens in {len(clock.end)} steps, expected {gen_tokens}")
    decode_s = clock.end[-1] - clock.end[0]
    intervals = [b - a for a, b in zip(clock.end, clock.end[1:])] or [decode_s]
    # a dense start's steps come first; the selection runs at the end of the last of them
    dense_steps_s = max(0.0, sum(intervals[:dense_steps]) - select_s) if dense_steps else 0.0
    sparse_intervals = intervals[dense_steps:] or intervals
    peak_dev = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return RunTiming(variant=variant, total_s=t1 - t0, prefill_s=clock.end[0] - t0 - (0.0 if dense_steps else select_s),
                     select_s=select_s, decode_s=decode_s, steps=len(clock.end) - 1,
                     peak_rss_mb=peak_rss_mb(), compact_mb=compact,
                     median_step_s=_median(sparse_intervals), load_before=load, peak_device_mb=peak_dev,
                     refreshes=refreshes, refresh_s=refresh_s, dense_steps=dense_steps, dense_steps_s=dense_steps_s)


# ---------------------------------------------------------------------------------
# the suite


def _variants(settings: BenchSettings) -> list[tuple[str, GlassConfig | None, bool]]:
    dense = None if settings.weights == "float" else GlassConfig(method="dense", weights=settings.weights)
    out: list[tuple[str, GlassConfig | None, bool]] = [("dense", dense, False), ("skip-ffn", dense, True)]
    for method in settings.method_list:
        for d in settings.densities:
            out.append((settings.variant(method, d), GlassConfig(method=method, density=float(d),
                                                                 share_batch=settings.share_batch,
                                                                 refresh=settings.refresh,
                                                                 refresh_growth=settings.refresh_growth,
                                                                 refresh_halflife=settings.refresh_halflife,
                                                                 schedule_halflife=settings.schedule_halflife,
                                                                 dense_start=settings.dense_start,
                                                                 comp_tokens=settings.comp_tokens,
                                                                 linear_blocks=settings.linear_blocks,
                                                                 weights=settings.weights), False))
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
            ctx = _skipped_with(model, config) if skip else contextlib.nullcontext()
            with ctx:
                timing = timed_generate(model, input_ids, n, name, None if skip else config, prior, generate_kwargs)
            runs[name if rnd >= 0 else f"{name}:warmup"].append(timing)
            if progress is not None:
                progress(f"round {rnd + 1}/{settings.repeats} {name}: {1e3 * timing.median_step_s:.1f} ms/step"
                         + (" (warm-up)" if rnd < 0 else ""))
    return runs


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
                     weight_bytes=linear_weight_bytes(model, settings.weights), compiled=compiled)
