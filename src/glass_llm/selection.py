"""Per-request neuron choice: the prompt's statistic fused with a global ranking.

A ``Selector`` is built once when GLASS is applied. It holds, for every FFN block, the
number of neurons to keep and the global ranking (already on the block's device, so a
request only ranks its own prompt statistic). ``choose`` runs once per request, after the
dense prefill, and returns the kept neuron indices of one block.
"""

from __future__ import annotations

import torch

from .adapters import FFNBlock, weight_out_in
from .ranking import aggregate, ranks, select_smallest
from .stats import finalize


class Selector:
    """Chooses ``k[i]`` neurons of block ``i`` from a prompt statistic and a global ranking.

    lam: weight of the prompt ranking (1 = prompt only, 0 = global ranking only).
    global_scores: one (d_ff,) score vector per block, or None for prompt-only methods.
    down_norms: per-block ``||W_down[:, j]||`` for the impact statistic, else None.
    """

    def __init__(self, blocks: list[FFNBlock], k: list[int], lam: float, statistic: str,
                 global_scores: list[torch.Tensor] | None, down_norms: list[torch.Tensor] | None = None,
                 share_batch: bool = False):
        self.k = list(k)
        self.lam = float(lam)
        self.statistic = statistic
        self.share_batch = share_batch
        devices = [weight_out_in(b.output_module).device for b in blocks]
        self.devices = devices
        self.global_ranks = (None if global_scores is None else
                             [ranks(g.float().to(d)) for g, d in zip(global_scores, devices)])
        self.down_norms = (None if down_norms is None else
                           [n.float().to(d) for n, d in zip(down_norms, devices)])

    @property
    def uses_prompt(self) -> bool:
        return self.lam > 0

    def choose(self, i: int, sums: torch.Tensor | None) -> torch.Tensor:
        """Kept neurons of block ``i``, shape (S, k), sorted ascending; S = 1 when one set
        serves the whole batch (``share_batch`` or a static method), else the batch size.

        sums: (B, d_ff) accumulated prompt statistic of the block (float32), or None when
        the method does not look at the prompt.
        """
        if not self.uses_prompt:
            return select_smallest(self.global_ranks[i], self.k[i]).unsqueeze(0)
        if sums is None:
            raise ValueError("no prompt statistic was recorded; was the prompt empty?")
        if self.share_batch:
            sums = sums.sum(0, keepdim=True)
        local = finalize(sums, self.statistic, None if self.down_norms is None else self.down_norms[i])
        r_loc = ranks(local)
        r_glob = None if self.global_ranks is None or self.lam == 1 else self.global_ranks[i]
        return select_smallest(aggregate(r_loc, r_glob, self.lam), self.k[i])
