"""Teacher-forced sparse evaluation: choose neurons from the prompt, then run the given
continuation through the sparse model in one forward pass over the KV cache. This is
exactly what step-by-step sparse decoding computes for those tokens (one forward for a
dense start, and with mask refresh one per refresh interval; with a loop guard the
intervals are cut again where the guard switches between dense and sparse steps)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .engine import GlassConfig, apply_glass
from .guard import guard_modes, stop_ids_of


@torch.no_grad()
def continuation_logits(model: nn.Module, prompt_ids: torch.Tensor, continuation: torch.Tensor,
                        config: GlassConfig | None = None, prior=None,
                        prompt_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list | None]:
    """Logits that predict each continuation token, shape (B, G, V), and the neuron sets.

    The prediction of ``continuation[:, 0]`` comes from the dense prefill, as in real
    decoding; the others from the sparse FFNs (``config`` None means dense). Prompts may
    be left-padded (``prompt_mask``).
    """
    from transformers import DynamicCache

    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    full_mask = torch.cat([prompt_mask, torch.ones_like(continuation)], dim=1)
    positions = (full_mask.cumsum(1) - 1).clamp_min(0)
    P = prompt_ids.shape[1]
    if config is not None and prior is not None:
        config = replace(config, prior=prior)
    handle = apply_glass(model, config) if config is not None else None
    try:
        cache = DynamicCache(config=model.config)
        first = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions[:, :P],
                      cache=cache, use_cache=True).logits[:, -1:]
        # A dense start goes in first, then (with mask refresh) the continuation goes in
        # pieces that end where generation re-selects, so the same neuron sets apply to
        # the same tokens.
        G = continuation.shape[1] - 1
        parts, lo, n = [first], 0, 0
        if handle is not None and handle.dense_start:
            lo = min(G, handle.dense_start)
        if lo:
            parts.append(model(input_ids=continuation[:, :lo], attention_mask=full_mask[:, :P + lo],
                               position_ids=positions[:, P:P + lo], cache=cache, use_cache=True).logits)
        guard = handle is not None and handle.active and handle.config.loop_guard
        modes = guard_modes(continuation[:, :G], handle.config.loop_guard, stop_ids_of(model)) if guard else None
        while lo < G:
            step = (handle.refresh_interval(n) if handle is not None else 0) or G  # 0: no refresh
            end, n = min(G, lo + step), n + 1
            while lo < end:
                hi = end if modes is None else next((j for j in range(lo + 1, end) if modes[j] != modes[lo]), end)
                parts.append(model(input_ids=continuation[:, lo:hi], attention_mask=full_mask[:, :P + hi],
                                   position_ids=positions[:, P + lo:P + hi], cache=cache, use_cache=True).logits)
                lo = hi
        logits = torch.cat(parts, dim=1)
        selections = None if handle is None else handle.selections
    finally:
        if handle is not None:
            handle.remove()
    return logits, selections
