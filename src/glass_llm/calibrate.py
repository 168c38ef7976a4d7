"""Calibration lifecycle: install hooks, run the model, read the sums, remove hooks.

``ActivationRecorder`` accumulates ``sum_t u_tj^2`` (see ``stats``), or with ``signed``
set the raw ``sum_t z_tj``, over every token that the caller marks as valid, for every
FFN block. Used to build global priors and
the evaluation's oracle sets. It leaves no state on the model after ``close()``.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters import FFNBlock, find_ffn_blocks
from .stats import accumulate_activation, accumulate_signed


class ActivationRecorder:
    def __init__(self, model: nn.Module, blocks: list[FFNBlock] | None = None):
        self.blocks = blocks if blocks is not None else find_ffn_blocks(model)
        # float32 sums on each block's own device: no copy between devices per forward
        self.sums: list[torch.Tensor] = [torch.zeros(b.d_ff, device=b.output_module.weight.device)
                                         for b in self.blocks]
        self.tokens = 0
        self.per_row = False
        self.signed = False  # sum the raw activations instead of the statistic
        self._row_sums: list[torch.Tensor | None] = [None] * len(self.blocks)
        self._mask: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> "ActivationRecorder":
        for i, block in enumerate(self.blocks):
            self._handles.append(block.output_module.register_forward_pre_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, i: int):
        def hook(module, args):
            z = args[0]
            mask = self._mask
            if z.dim() == 2 and mask is not None:  # (B*T, d_ff), as some models (OPT) flatten it
                z = z.view(mask.shape[0], -1, z.shape[-1])
            if mask is not None and mask.shape != z.shape[:2]:
                mask = None if mask.shape[1] < z.shape[1] else mask[:, -z.shape[1]:]
            s = (accumulate_signed if self.signed else accumulate_activation)(z, mask)
            if self.per_row:
                self._row_sums[i] = s if self._row_sums[i] is None else self._row_sums[i] + s
            else:
                self.sums[i] += s.sum(0)
            return None

        return hook

    @torch.no_grad()
    def run(self, model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor | None = None, **kwargs):
        """Forward ``input_ids``; only tokens where ``mask`` is 1 enter the statistic."""
        if mask is None:
            mask = torch.ones_like(input_ids)
        self._mask = mask
        try:
            out = model(input_ids=input_ids, attention_mask=kwargs.pop("attention_mask", mask), **kwargs)
        finally:
            self._mask = None
        self.tokens += int(mask.sum())
        return out

    def take_row_sums(self) -> list[torch.Tensor]:
        """Per-row sums since the last call (only when ``per_row`` is set)."""
        out = [s for s in self._row_sums]
        self._row_sums = [None] * len(self.blocks)
        return out
