"""Per-request neuron choice: the prompt's statistic fused with a global ranking.

A ``Selector`` is built once when GLASS is applied (``build_selector``). It holds, for
every FFN block, the number of neurons to keep and the global ranking (already on the
block's device, so a request only ranks its own prompt statistic). ``choose`` runs once
per request, after the dense prefill, and returns the kept neuron indices of one block.

Two settings go beyond the paper, both read from the prior's selection calibration
(``calibration_data``): the default ``glass`` uses the schedule, ``glass-refresh`` both
(its local view grows with every generated token, and the adaptive lam follows it):

* ``schedule``: ``k`` differs per block, allocated from the sensitivity profile under the
  user's one density (``schedule.allocate``); computed once, here, and only at densities
  where the calibration's schedule check measured it better than one density for all
  (``Calibration.use_schedule``; for ``glass``, ``spec.reply_schedule``, the profile rescaled to
  each block's loss on greedy replies and its own check, ``Calibration.use_reply_schedule``);
  With ``schedule_halflife`` (the ``*-fade`` methods), re-selections move ``k`` toward the
  uniform density as the reply grows (``Selector.counts``): the schedule is measured for a
  selection from the prior, and a local view of many tokens errs less in every block;
* ``adaptive``: lam differs per block and per request, looked up from the prompt's token
  count (``dispersion.lam_for_tokens``), once per block per selection: no decode-step cost.

``glass-a``/``glass-i`` keep one fixed lam and a uniform density: their selections are
exactly ``ranking.select`` (the paper's method).
"""

from __future__ import annotations

import warnings

import torch

from .adapters import FFNBlock, weight_out_in
from .dispersion import lam_for_tokens, tilt
from .methods import DEFAULT_LAM, PROMPT_LAM_TOKENS, PROMPT_LAMS
from .neighbours import nearest, unit_statistic
from .ranking import aggregate, keep_count, ranks, select_smallest
from .schedule import allocate, blend
from .stats import finalize


class Selector:
    """Chooses ``k[i]`` neurons of block ``i`` from a prompt statistic and a global ranking.

    lam: weight of the prompt ranking (1 = prompt only, 0 = global ranking only).
    global_scores: one (d_ff,) score vector per block, or None for prompt-only methods.
    down_norms: per-block ``||W_down[:, j]||`` for the impact statistic, else None.
    lam_table, lam_windows: adaptive lam, (n_blocks, W) lams for prompts of ``lam_windows``
    (W,) tokens; ``lam`` then only tilts them (``dispersion.tilt``; 0.5 keeps them).
    k_even: with a per-layer schedule ``k``, the uniform density's counts (the same density), which
    ``counts`` blends toward; None without a schedule.
    bank, neighbours: the greedy replies kept one by one, ((R, n_blocks, d_ff) sums, (R,) token counts), and
    how many of those nearest to each prompt make its global view (``neighbours``) in place of ``global_scores``.
    """

    def __init__(self, blocks: list[FFNBlock], k: list[int], lam: float, statistic: str,
                 global_scores: list[torch.Tensor] | None, down_norms: list[torch.Tensor] | None = None,
                 share_batch: bool = False, lam_table: torch.Tensor | None = None,
                 lam_windows: torch.Tensor | None = None, prior_means: list[torch.Tensor] | None = None,
                 k_even: list[int] | None = None, bank: tuple[torch.Tensor, torch.Tensor] | None = None,
                 neighbours: int = 0):
        self.k = list(k)
        self.k_even = None if k_even is None else list(k_even)
        self.lam = float(lam)
        self.statistic = statistic
        self.share_batch = share_batch
        devices = [weight_out_in(b.output_module).device for b in blocks]
        self.devices = devices
        self.global_ranks = (None if global_scores is None else
                             [ranks(g.float().to(d)) for g, d in zip(global_scores, devices)])
        self.down_norms = (None if down_norms is None else
                           [n.float().to(d) for n, d in zip(down_norms, devices)])
        self.adaptive = lam_table is not None
        if self.adaptive:
            if lam_windows is None or lam_table.shape != (len(blocks), lam_windows.numel()):
                raise ValueError("an adaptive lam needs a (blocks, windows) table and its windows")
            if self.global_ranks is None:
                raise ValueError("an adaptive lam needs global scores")
            table = tilt(lam_table.float(), self.lam)
            self.lam_rows = [table[i].to(d) for i, d in enumerate(devices)]
            self.lam_windows = [lam_windows.float().to(d) for d in devices]
        self.prior_means = (None if prior_means is None else
                            [m.float().to(d) for m, d in zip(prior_means, devices)])
        if self.prior_means is not None and not self.adaptive:
            raise ValueError("score fusion (prior_means) needs an adaptive lam table")
        self.neighbours, self.bank = int(neighbours), None
        if self.neighbours:
            if bank is None or self.global_ranks is None or self.prior_means is not None:
                raise ValueError("the nearest greedy replies need the prior's bank of replies and rank fusion")
            if not 1 <= self.neighbours <= bank[0].shape[0]:
                raise ValueError(f"neighbours must be in [1, {bank[0].shape[0]}] (the replies in the prior's bank), "
                                 f"got {self.neighbours}")
            sums = bank[0].float().to(devices[0])
            self.bank = (sums, unit_statistic(sums, bank[1].to(devices[0])))  # the sums, and what is compared

    @property
    def uses_prompt(self) -> bool:
        return self.lam > 0

    def lam_of(self, i: int, n_tokens: torch.Tensor) -> torch.Tensor:
        """Block ``i``'s adaptive lam for prompts of ``n_tokens`` (B,) tokens, shape (B,)."""
        return lam_for_tokens(self.lam_rows[i], self.lam_windows[i], n_tokens.to(self.devices[i]))

    def counts(self, weight: float) -> list[int]:
        """Per-block neuron counts that keep ``weight`` of the schedule's departure from the
        uniform density (1: the schedule ``k``; 0: ``k_even``); ``k`` without a schedule."""
        if self.k_even is None or weight >= 1:
            return self.k
        return blend(self.k, self.k_even, weight)

    def choose(self, i: int, sums: torch.Tensor | None, n_tokens: torch.Tensor | None = None,
               k: int | None = None) -> torch.Tensor:
        """Kept neurons of block ``i``, shape (S, k), sorted ascending; S = 1 when one set
        serves the whole batch (``share_batch`` or a static method), else the batch size.

        sums: (B, d_ff) accumulated prompt statistic of the block (float32), or None when
        the method does not look at the prompt. n_tokens: (B,) prompt tokens per row
        (padding excluded); an adaptive lam needs it. k: neurons to keep (default ``self.k[i]``).
        """
        k = self.k[i] if k is None else k
        if not self.uses_prompt:
            return select_smallest(self.global_ranks[i], k).unsqueeze(0)
        if self.bank is not None:
            raise ValueError("the nearest greedy replies compare the prompt over every block: use choose_all")
        return select_smallest(self._fused([i], [sums], n_tokens)[0], k)

    def choose_all(self, sums: list[torch.Tensor | None], n_tokens: torch.Tensor | None = None,
                   k: list[int] | None = None) -> list[torch.Tensor]:
        """``choose`` for every block at once: the same sets, neuron for neuron. Blocks of one
        width on one device are ranked and fused as one stacked tensor (one sort instead of
        one per block), so a selection's cost hardly grows with the number of blocks."""
        k = self.k if k is None else k
        if len(sums) != len(self.k) or len(k) != len(self.k):
            raise ValueError(f"need one statistic and one count per block ({len(self.k)}), "
                             f"got {len(sums)} and {len(k)}")
        if not self.uses_prompt:
            return [self.choose(i, None, n_tokens, k[i]) for i in range(len(k))]
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(sums):
            if s is None:
                raise ValueError("no prompt statistic was recorded; was the prompt empty?")
            groups.setdefault((s.device, s.shape[-1]), []).append(i)
        chosen: list[torch.Tensor | None] = [None] * len(k)
        near = self._nearest_ranks(sums, n_tokens) if self.bank is not None else None
        for idx in groups.values():
            fused = self._fused(idx, [sums[i] for i in idx], n_tokens, near)
            order = torch.argsort(fused, dim=-1, stable=True)  # per row: what select_smallest sorts
            for g, i in enumerate(idx):
                if not 1 <= k[i] <= order.shape[-1]:
                    raise ValueError(f"k must be in [1, {order.shape[-1]}], got {k[i]}")
                chosen[i] = torch.sort(order[g, ..., :k[i]], dim=-1).values
        return chosen

    def _nearest_ranks(self, sums: list[torch.Tensor], n_tokens: torch.Tensor | None) -> list[torch.Tensor]:
        """Per block, (S, d_ff) global ranks of each row's nearest greedy replies (``neighbours``)."""
        if n_tokens is None:
            raise ValueError("the nearest greedy replies need the number of prompt tokens per row (n_tokens)")
        dev = self.devices[0]
        query, n = torch.stack([s.to(dev) for s in sums], 1), n_tokens.to(dev)
        if self.share_batch:
            query, n = query.sum(0, keepdim=True), n.sum(0, keepdim=True)
        near = self.bank[0][nearest(unit_statistic(query, n.float()), self.bank[1], self.neighbours)].sum(1)  # (S, L, d)
        if all(d == dev for d in self.devices):  # one ranking of the stacked blocks
            norms = None if self.down_norms is None else torch.stack(self.down_norms)
            return list(ranks(finalize(near, self.statistic, norms)).unbind(1))
        return [ranks(finalize(near[:, i].to(d), self.statistic, None if self.down_norms is None else self.down_norms[i]))
                for i, d in enumerate(self.devices)]

    def _fused(self, idx: list[int], sums: list[torch.Tensor | None], n_tokens: torch.Tensor | None,
               near: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Fused scores (G, S, d_ff) of blocks ``idx`` (one width, one device), smaller is
        better: the prompt ranking merged with the global one at each block's lam (``near``: per
        block the (S, d_ff) global ranks of each row's nearest replies, else the one global ranking).
        Every step is elementwise or per row, so stacking blocks changes no value."""
        if any(s is None for s in sums):
            raise ValueError("no prompt statistic was recorded; was the prompt empty?")
        if self.share_batch:
            sums = [s.sum(0, keepdim=True) for s in sums]
            if n_tokens is not None:
                n_tokens = n_tokens.sum(0, keepdim=True)
        stacked = torch.stack(sums)  # (G, S, d_ff)
        norms = None if self.down_norms is None else torch.stack([self.down_norms[i] for i in idx]).unsqueeze(1)
        r_loc = ranks(finalize(stacked, self.statistic, norms))
        if self.adaptive:
            if n_tokens is None:
                raise ValueError("the adaptive lam needs the number of prompt tokens per row (n_tokens)")
            table = torch.stack([self.lam_rows[i] for i in idx])
            lam = lam_for_tokens(table, self.lam_windows[idx[0]], n_tokens.to(table.device)).unsqueeze(-1)  # (G, S, 1)
            if self.prior_means is not None:  # score fusion: mix the mean statistics
                mean = stacked / n_tokens.to(stacked.device, stacked.dtype).clamp_min(1).unsqueeze(-1)
                means = torch.stack([self.prior_means[i] for i in idx]).unsqueeze(1)
                return -(lam * mean + (1 - lam) * means)
            return lam * r_loc + (1 - lam) * self._global(idx, near)
        r_glob = None if self.global_ranks is None or self.lam == 1 else self._global(idx, near)
        return aggregate(r_loc, r_glob, self.lam)

    def _global(self, idx: list[int], near: list[torch.Tensor] | None) -> torch.Tensor:
        """(G, S or 1, d_ff) global ranks of blocks ``idx``."""
        if near is not None:
            return torch.stack([near[i] for i in idx])
        return torch.stack([self.global_ranks[i] for i in idx]).unsqueeze(1)


def _calibration_of(prior, n_blocks: int):
    """The prior's selection calibration (``apply_glass`` computes it first for an older
    prior when it has the model)."""
    if prior is None:
        raise ValueError("the 'glass' method reads its schedule and lam table from the prior; pass prior=...")
    if prior.calibration is None:
        raise ValueError("this prior has no selection calibration (an older file): rebuild it with "
                         "`glass prior MODEL -o FILE`, or use method 'glass-a'")
    prior.calibration.check(n_blocks)
    return prior.calibration


def checked_short_lam(cal) -> float:
    """The calibration's short-prompt lam, or ``DEFAULT_LAM`` (with a warning) for a prior without the check."""
    lam = cal.short_lam if cal is not None else None
    if lam is None:
        warnings.warn("this prior predates the short-prompt lam check (format 5 or older), so the glass method fuses "
                      f"at lam {DEFAULT_LAM:g} for every prompt length; the cached default prior gets the check when "
                      "a command next loads it, a file you named with `glass prior MODEL --recalibrate FILE`",
                      stacklevel=3)
        return DEFAULT_LAM
    return lam


def build_selector(blocks: list[FFNBlock], config, spec, lam: float, statistic: str,
                   global_scores: list[torch.Tensor] | None, down_norms: list[torch.Tensor] | None,
                   prior=None) -> Selector:
    """The Selector for ``config`` (a ``GlassConfig``) and its method ``spec``.

    A method with ``spec.schedule`` and one float density gets per-block ``k`` from the
    prior's sensitivity profile where the prior's schedule check says it pays (else the
    uniform density; with ``spec.reply_schedule`` the profile measured on greedy replies and its
    own check, ``reply_schedule``, or the stored profile with a warning on a prior without that
    measurement); an explicit per-block density tuple overrides it. A
    method with ``spec.adaptive`` gets the prior's lam table, one with ``spec.prompt_lam`` a lam
    by prompt length, the same for every block (``lam`` then tilts either): "rule" the lams of
    ``methods.PROMPT_LAMS``, "checked" the prior's checked short-prompt lam up to 8 tokens and
    0.5 from 32 (no table at all where that lam is 0.5, or the prior has no check: one lam).
    """
    d_ff = [b.d_ff for b in blocks]
    per_block = isinstance(config.density, (list, tuple))
    use_schedule = spec.schedule and not per_block and not spec.dense
    use_adaptive = spec.adaptive and not spec.dense and 0 < lam < 1
    by_length = spec.prompt_lam and not spec.dense and 0 < lam < 1
    near = spec.neighbours and not spec.dense and 0 < lam < 1
    cal = _calibration_of(prior, len(blocks)) if (use_schedule or use_adaptive or by_length or near) else None
    if near and spec.neighbours_checked and not cal.use_neighbours:
        if cal.neighbours_check is None:
            warnings.warn(f"this prior predates the nearest-replies check (format 8 or older), so {spec.name!r} fuses "
                          "every prompt with the one prior of greedy text; the cached default prior gets the check "
                          "when a command next loads it, a file you named with `glass prior MODEL --recalibrate FILE`",
                          stacklevel=2)
        near = False  # the check found no gain over the one prior on this model
    if near and cal.bank_sums is None:
        raise ValueError(f"{spec.name!r} reads the greedy replies kept one by one in the prior, and this prior has none "
                         "(format 7 or older): add them with `glass prior MODEL --recalibrate FILE`")
    even = [keep_count(d, n) for d, n in zip(config.density_for(len(blocks)), d_ff)]
    reply = use_schedule and spec.reply_schedule
    if reply and cal.reply_loss is None:
        warnings.warn(f"this prior predates the schedule of greedy replies (format 6 or older), so {spec.name!r} "
                      "allocates its per-layer densities from the prior's stored profile; the cached default prior "
                      "gets the measurement when a command next loads it, a file you named with "
                      "`glass prior MODEL --recalibrate FILE`", stacklevel=2)
        reply = False
    scheduled = use_schedule and (cal.use_reply_schedule if reply else cal.use_schedule)(float(config.density))
    profile = cal.reply_profile if reply else (cal.profile if scheduled else None)
    k = allocate(profile, cal.grid, d_ff, float(config.density)) if scheduled else even
    score = use_adaptive and spec.fusion == "score"
    table = (cal.score_lam if score else cal.lam) if use_adaptive else None
    windows = cal.windows if use_adaptive else None
    lams = (PROMPT_LAMS if spec.prompt_lam == "rule" else (checked_short_lam(cal), DEFAULT_LAM)) if by_length else ()
    if by_length and lams[0] != lams[-1]:  # one lam row for every block, by the prompt's length
        table = torch.tensor(lams, dtype=torch.float32).expand(len(blocks), -1).contiguous()
        windows = torch.tensor(PROMPT_LAM_TOKENS, dtype=torch.float32)
    means = list(prior.sums.float() / max(prior.n_tokens, 1)) if score else None
    return Selector(blocks, k, lam, statistic, global_scores, down_norms, share_batch=config.share_batch,
                    lam_table=table, lam_windows=windows, prior_means=means, k_even=even if scheduled else None,
                    bank=(cal.bank_sums, cal.bank_tokens) if near else None, neighbours=spec.neighbours if near else 0)
