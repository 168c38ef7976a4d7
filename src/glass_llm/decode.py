"""Compiled decoding: the ``model.generate`` arguments that compile the decode step.

transformers runs the prefill eagerly and compiles only the decode forward when the KV
cache has a static shape (``cache_implementation="static"``) and a ``CompileConfig`` is
given. GLASS fits that split: the neuron sets are chosen and the compact weights are
written right after the (eager) prefill, into buffers whose shapes depend only on the
density, so one compiled decode step serves every request of that density, whatever
the prompt length. On a GPU the step is captured as a CUDA graph
(``mode="reduce-overhead"``); on the CPU inductor compiles it (``mode="default"``).

    with apply_glass(model, GlassConfig(method="glass", density=0.5, prior=prior)):
        out = model.generate(**enc, max_new_tokens=128, **compile_kwargs(model))
"""

from __future__ import annotations

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


DEFAULT_MAX_CACHE_LEN = 1024


def compile_kwargs(model: nn.Module, mode: str | None = None, backend: str = "inductor",
                   fullgraph: bool = True, max_cache_len: int = DEFAULT_MAX_CACHE_LEN) -> dict:
    """``generate`` keyword arguments for a compiled decode step on ``model``'s device.

    mode: torch.compile mode (default: ``reduce-overhead``, i.e. CUDA graphs, on CUDA;
    ``default`` elsewhere). backend: a torch.compile backend (``eager``/``aot_eager``
    check that the step traces as one graph without code generation). max_cache_len:
    the static KV cache's length (prompt + new tokens at most); every request up to it
    reuses one cache shape, so the decode step is compiled once (a longer request grows
    the cache and compiles again). Each step attends over the whole cache, so a
    smaller value is faster for short requests.
    """
    if max_cache_len < 2:
        raise ValueError(f"max_cache_len must be >= 2, got {max_cache_len}")
    from transformers import CompileConfig

    device = next(model.parameters()).device
    if mode is None:
        mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    config = CompileConfig(fullgraph=fullgraph, dynamic=False, backend=backend, mode=mode)
    if device.type != "cuda":
        config._compile_all_devices = True  # transformers compiles on the CPU only when asked
    return {"cache_implementation": "static", "compile_config": config, "max_cache_len": int(max_cache_len)}


def compiled_frames() -> int:
    """How many frames torch.compile has compiled so far in this process (to check that a
    second request of the same density compiles nothing new)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def reset_compiled(model: nn.Module) -> None:
    """Forget ``model``'s compiled decode step (transformers keeps it on the model)."""
    for name in ("_compiled_call", "_last_compile_config"):
        if name in model.__dict__:
            delattr(model, name)
    torch._dynamo.reset()
