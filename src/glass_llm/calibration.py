"""Measure the selection calibration of a prior on text the model writes itself.

``calibrate_prior(model, tokenizer, prior)`` returns the prior with a ``Calibration``
(``calibration_data``) that the default ``glass`` method uses:

1. sample ``n_seqs`` sequences from the model at temperature 1 (``self_sample``; sequence
   indices start at ``SEQ_OFFSET``, so they are other sequences than the prior's own), and
   run prompt + sample densely once, recording every block's neuron activations;
2. per block, the lam tables: for rank fusion, the least-squares weight of a ``w``-token
   window's ranking against the prior's, for predicting the ranking of the following
   tokens (``dispersion.window_lams``); for score fusion, the weight of the window's mean
   statistic against the prior's whose top neurons best overlap the following tokens'
   (``dispersion.window_score_lams``);
3. per block, the sensitivity profile: the relative error of the block's output when it
   keeps only the prior's top ``grid[g]`` fraction of neurons, scaled to KL units by one
   forward per block with only that block sparsified (at ``GAIN_DENSITY``, on a few rows),
   so ``profile[i, g]`` estimates the KL to the dense model per token when only block ``i``
   runs at density ``grid[g]``. Error curves are cheap (one matrix product per density);
   the KL forwards capture how much each block's error matters downstream (the first
   block's, for instance, far more than its output error says);
4. the schedule check: on ``check_rows`` other sampled rows, the first ``check_prompt``
   sampled tokens play the prompt and the KL to the dense model over the next tokens is
   measured with every block sparsified as the ``glass`` method would (per-row prompt
   statistic fused with the prior at the calibrated lam), once with the allocated
   schedule and once with the uniform density, at each of ``CHECK_DENSITIES``. The
   profile adds up single-block losses and the model's own text is not the user's, so
   the schedule is used at a density only where it measured better with 95% confidence
   (the upper end of the ratio's t interval below 1; ``Calibration.use_schedule``).

5. the greedy statistic (``greedy_text.greedy_statistic``): ``greedy_rows`` sequences whose first
   ``greedy_prefix`` tokens are sampled at temperature 1 (a varied start, like a prompt)
   and whose next ``greedy_len`` tokens are decoded greedily; the statistic of the greedy
   tokens is the global view of ``glass`` and ``glass-greedy`` (the ``greedy`` global
   source). Why: greedy text is not the text of temperature-1 sampling (it repeats, and it
   stays on the likeliest words), and a user decoding greedily is served best by a prior
   of text written that way (BENCHMARKS.md, "A prior of greedy text").

Nothing here reads evaluation text. About 1-2 min for SmolLM2-135M on 2 CPU cores.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import torch
from torch import nn

from .adapters import FFNBlock, find_ffn_blocks, weight_out_in
from .calibration_data import Calibration
from .dispersion import WINDOWS, fill_missing, window_lams, window_score_lams
from .greedy_text import GREEDY_OFFSET, greedy_bank, greedy_statistic
from .intervals import mean_ci
from .prior import Prior
from .ranking import keep_count
from .schedule import allocate
from .selection import Selector
from .self_sample import sample_and_record, self_prompts

SEQ_OFFSET = 1 << 20
GRID = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
GAIN_DENSITY = 0.5
CHECK_DENSITIES = (0.3, 0.5, 0.7, 0.9)
DEFAULTS = {"n_seqs": 16, "seq_len": 128, "horizon": 64, "stride": 8, "gain_rows": 4, "gain_len": 32,
            "err_tokens": 1024, "check_rows": 12, "check_prompt": 8, "check_len": 64,
            "greedy_rows": 64, "greedy_prefix": 8, "greedy_len": 128}
BANK_ROWS = 256  # greedy replies kept one by one for glass-neighbours (BENCHMARKS.md, "The nearest greedy replies")


def token_ids_of(model: nn.Module) -> SimpleNamespace:
    """The token ids self-sampling needs, read from the model's generation config, for
    callers that have no tokenizer (sequences then start at BOS only)."""
    gen = getattr(model, "generation_config", None)
    cfg = getattr(model, "config", None)
    bos = getattr(gen, "bos_token_id", None) or getattr(cfg, "bos_token_id", None)
    eos = getattr(gen, "eos_token_id", None) or getattr(cfg, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, list) else eos
    if bos is None and eos is None:
        raise ValueError("the model's config names neither a BOS nor an EOS token; pass its tokenizer")
    pad = getattr(gen, "pad_token_id", None) or getattr(cfg, "pad_token_id", None)
    return SimpleNamespace(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, chat_template=None)


def _block_error(z: torch.Tensor, w_down: torch.Tensor, global_scores: torch.Tensor) -> torch.Tensor:
    """Relative output error ``||W z - W_S z_S||^2 / ||W z||^2`` at each ``GRID`` density,
    ``S`` the prior's top neurons; z: (N, d_ff), w_down: (hidden, d_ff)."""
    z, w = z.float(), w_down.float()
    order = torch.argsort(global_scores.float(), descending=True, stable=True)
    full = (z @ w.T).square().sum().clamp_min(1e-30)
    out = []
    for g in GRID:
        drop = order[keep_count(g, z.shape[1]):]
        out.append(float((z[:, drop] @ w[:, drop].T).square().sum() / full))
    return torch.tensor(out)


class _Capture:
    """Forward pre-hooks on the output projections: per block, the per-token ``u^2``
    (for the lam table) and a token sample of ``z`` (for the error curves)."""

    def __init__(self, blocks: list[FFNBlock], mask: torch.Tensor, err_tokens: int):
        self.mask, self.err_tokens = mask, err_tokens
        self.u2: list[torch.Tensor | None] = [None] * len(blocks)
        self.z: list[torch.Tensor | None] = [None] * len(blocks)
        self._h = [b.output_module.register_forward_pre_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i: int):
        def hook(module, args):
            z = args[0].float()
            u2 = (z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)).square()
            m = self.mask.to(z.device)
            self.u2[i] = (u2 * m.unsqueeze(-1)).cpu()
            self.z[i] = z[m.bool()][: self.err_tokens].cpu()

        return hook

    def close(self) -> None:
        for h in self._h:
            h.remove()


class _MaskOne:
    """Forward pre-hook that zeroes the unselected neurons of one block's input
    (``keep`` broadcasts against it: (d_ff,), or (B, T, d_ff) per row and position)."""

    def __init__(self, block: FFNBlock, keep: torch.Tensor):
        self.keep = keep
        self._h = block.output_module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        z = args[0]
        return (z * self.keep.to(device=z.device, dtype=z.dtype),) + tuple(args[1:])

    def close(self) -> None:
        self._h.remove()


def _kl_per_row(ref: torch.Tensor, out: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean KL(ref || out) per row over the positions ``where`` (B, T); log-probabilities in."""
    kl = (ref.exp() * (ref - out)).sum(-1)
    return (kl * where).sum(1) / where.sum(1).clamp_min(1)


@torch.no_grad()
def _check_schedule(model: nn.Module, blocks: list[FFNBlock], ids: torch.Tensor, mask: torch.Tensor,
                    window: torch.Tensor, target: torch.Tensor, local: list[torch.Tensor], ref: torch.Tensor,
                    glob: torch.Tensor, profile: torch.Tensor, lam: torch.Tensor, n_prompt: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """KL ratio (allocated schedule / uniform density) at each of ``CHECK_DENSITIES``, and
    the upper end of its 95% t interval: the geometric mean over rows of the ratio of the
    mean KL over the ``target`` positions, with every block sparsified as ``glass`` does
    from the ``window`` tokens' statistic ``local`` (per block, (rows, d_ff)); ``ref``: the
    dense log-probabilities of the same rows."""
    d_ff = [b.d_ff for b in blocks]
    n_tokens = torch.full((ids.shape[0],), n_prompt)
    after = target.bool().unsqueeze(-1)
    ratios, uppers = [], []
    for density in CHECK_DENSITIES:
        kls = []
        for k in (allocate(profile, torch.tensor(GRID), d_ff, density), [keep_count(density, n) for n in d_ff]):
            sel = Selector(blocks, k, 0.5, "activation", list(glob), lam_table=lam,
                           lam_windows=torch.tensor(WINDOWS, dtype=torch.float32))
            hooks = []
            for i, b in enumerate(blocks):
                dev = sel.devices[i]
                chosen = sel.choose(i, local[i].to(dev), n_tokens.to(dev)).cpu()
                keep = torch.zeros(ids.shape[0], b.d_ff).scatter_(1, chosen, 1.0)
                hooks.append(_MaskOne(b, torch.where(after, keep.unsqueeze(1), torch.ones(()))))
            try:
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            finally:
                for h in hooks:
                    h.close()
            kls.append(_kl_per_row(ref, torch.log_softmax(logits.float(), -1).cpu(), target).clamp_min(1e-9))
        ci = mean_ci((kls[0] / kls[1]).log().tolist()).exp()
        ratios.append(ci.mean)
        uppers.append(ci.high if math.isfinite(ci.high) else math.inf)
    return torch.tensor(ratios), torch.tensor(uppers)


@torch.no_grad()
def calibrate_prior(model: nn.Module, tokenizer, prior: Prior, seed: int = 0, progress: bool = True,
                    **settings) -> Prior:
    """The prior with a selection calibration measured on the model's own samples."""
    opts = {**DEFAULTS, **settings}
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown calibration setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    t0 = time.perf_counter()
    blocks = find_ffn_blocks(model)
    prior.check_matches(model, blocks)
    tokenizer = tokenizer if tokenizer is not None else token_ids_of(model)
    glob = prior.scores_for("activation")
    device = next(model.parameters()).device
    greedy, greedy_tokens, greedy_mean = greedy_statistic(model, tokenizer, blocks, seed, opts["greedy_rows"],
                                                          opts["greedy_prefix"], opts["greedy_len"])
    phases = {"greedy": time.perf_counter() - t0}
    indices = list(range(SEQ_OFFSET, SEQ_OFFSET + opts["n_seqs"]))
    _, counts, tokens = sample_and_record(model, tokenizer, blocks, indices, opts["seq_len"], seed)
    phases["sample"] = time.perf_counter() - t0 - sum(phases.values())
    prompts = self_prompts(tokenizer)
    rows = [prompts[i % len(prompts)] + tokens[r, : int(counts[r])].tolist() for r, i in enumerate(indices)]
    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):  # right padding: position t of every row is token t
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    ids, mask = ids.to(device), mask.to(device)
    # the KL-scale forwards use the longest rows; the schedule check the next longest,
    # whose first sampled tokens play the prompt
    by_length = torch.argsort(lengths, descending=True, stable=True)
    g_rows = by_length[: opts["gain_rows"]].to(device)
    c_rows = by_length[opts["gain_rows"]:][: opts["check_rows"]]
    if c_rows.numel() == 0:
        c_rows = by_length[: opts["check_rows"]]
    starts = torch.tensor([len(prompts[i % len(prompts)]) for i in indices])
    c_len = min(width, opts["check_len"])
    pos = torch.arange(c_len).unsqueeze(0)
    c_start, c_end = starts[c_rows].unsqueeze(1), lengths[c_rows].clamp(max=c_len).unsqueeze(1)
    c_window = ((pos >= c_start) & (pos < c_start + opts["check_prompt"])).float()
    c_target = ((pos >= c_start + opts["check_prompt"]) & (pos < c_end)).float()
    cap = _Capture(blocks, mask, opts["err_tokens"])
    try:
        dense = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        cap.close()
    phases["forward"] = time.perf_counter() - t0 - sum(phases.values())
    lam = torch.stack([window_lams(cap.u2[i], lengths, glob[i], WINDOWS, opts["horizon"], opts["stride"])
                       for i in range(len(blocks))])
    lam = fill_missing(lam)
    mean = prior.sums.float() / max(prior.n_tokens, 1)
    score_lam = fill_missing(torch.stack([
        window_score_lams(cap.u2[i], lengths, mean[i], WINDOWS, opts["horizon"], opts["stride"])
        for i in range(len(blocks))]))
    errors = torch.stack([_block_error(cap.z[i], weight_out_in(b.output_module), glob[i])
                          for i, b in enumerate(blocks)])
    c_local = [(cap.u2[i][c_rows, :c_len] * c_window.unsqueeze(-1)).sum(1) for i in range(len(blocks))]
    del cap
    phases["tables"] = time.perf_counter() - t0 - sum(phases.values())
    # KL scale: one forward per block with only that block at GAIN_DENSITY
    g_len = min(width, opts["gain_len"])
    g_ids, g_mask = ids[g_rows, :g_len], mask[g_rows, :g_len]
    ref = torch.log_softmax(dense[g_rows, :g_len].float(), -1)
    c_ref = torch.log_softmax(dense[c_rows.to(device), :c_len].float(), -1).cpu()
    del dense
    gidx = GRID.index(GAIN_DENSITY)
    profile = torch.zeros(len(blocks), len(GRID))
    for i, b in enumerate(blocks):
        keep = torch.zeros(b.d_ff)
        keep[torch.argsort(glob[i].float(), descending=True, stable=True)[: keep_count(GAIN_DENSITY, b.d_ff)]] = 1
        hook = _MaskOne(b, keep)
        try:
            out = torch.log_softmax(model(input_ids=g_ids, attention_mask=g_mask, use_cache=False).logits.float(), -1)
        finally:
            hook.close()
        kl = ((ref.exp() * (ref - out)).sum(-1) * g_mask).sum() / g_mask.sum()
        scale = float(kl) / max(float(errors[i, gidx]), 1e-12)
        profile[i] = errors[i] * scale
        if progress:
            print(f"\rcalibrating selection: block {i + 1}/{len(blocks)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    phases["kl_scale"] = time.perf_counter() - t0 - sum(phases.values())
    check = (None, None)
    if c_rows.numel() >= 2 and bool(c_target.sum(1).gt(0).all()):
        c_ids, c_mask = ids[c_rows.to(device), :c_len], mask[c_rows.to(device), :c_len]
        check = _check_schedule(model, blocks, c_ids, c_mask, c_window, c_target, c_local, c_ref, glob, profile,
                                lam, opts["check_prompt"])
    elif progress:
        print("calibration: the sampled rows are too short for the schedule check; the schedule stays off",
              file=sys.stderr)
    phases["check"] = time.perf_counter() - t0 - sum(phases.values())
    meta = {"source": "self", "seed": seed, "seq_offset": SEQ_OFFSET, "tokens": int(lengths.sum()),
            "gain_density": GAIN_DENSITY, "seconds": {k: round(v, 1) for k, v in phases.items()},
            "greedy_offset": GREEDY_OFFSET, "greedy_tokens": greedy_tokens, **opts}
    cal = Calibration(grid=torch.tensor(GRID), profile=profile, windows=torch.tensor(WINDOWS, dtype=torch.float32),
                      lam=lam, score_lam=score_lam, meta=meta,
                      check_densities=None if check[0] is None else torch.tensor(CHECK_DENSITIES),
                      check_ratio=check[0], check_upper=check[1], greedy_sums=greedy,
                      greedy_mean=greedy_mean)
    cal.check(len(blocks))
    return replace(prior, calibration=cal, meta={**prior.meta, "format_version": cal.format_version})


def ensure_calibrated(model: nn.Module, tokenizer, prior: Prior, stream=sys.stderr, **settings) -> Prior:
    """``prior`` itself when it carries a complete calibration; else the prior with what it
    lacks computed now, after saying so on ``stream``: the whole calibration for a file of
    format 1, the greedy statistic and its mean activation for formats 2 to 4."""
    if prior.calibration is not None and prior.calibration.complete:
        return prior
    if prior.calibration is not None:
        print("this prior file has no statistic or mean activation of greedy text (format 4 or older): computing "
              "them now, one greedy decode of 64 sequences (about a minute for a 135M model on 2 CPU cores; a cached prior keeps "
              "it; for a file you named, `glass prior MODEL --recalibrate FILE`)",
              file=stream, flush=True)
        return with_greedy(model, tokenizer, prior, **settings)
    print("this prior file has no selection calibration (an older format): computing it now, "
          "about a minute; rebuild the prior with `glass prior` to store it", file=stream, flush=True)
    return calibrate_prior(model, tokenizer, prior, progress=False, **settings)


@torch.no_grad()
def with_greedy(model: nn.Module, tokenizer, prior: Prior, **settings) -> Prior:
    """``prior`` with the greedy statistic and mean activation put in its calibration (the rest unchanged)."""
    opts = {**DEFAULTS, **settings}
    blocks = find_ffn_blocks(model)
    prior.check_matches(model, blocks)
    tokenizer = tokenizer if tokenizer is not None else token_ids_of(model)
    seed = int(prior.calibration.meta.get("seed", 0))
    greedy, n, mean = greedy_statistic(model, tokenizer, blocks, seed, opts["greedy_rows"], opts["greedy_prefix"],
                                       opts["greedy_len"])
    meta = {**prior.calibration.meta, "greedy_offset": GREEDY_OFFSET, "greedy_tokens": n,
            **{k: opts[k] for k in ("greedy_rows", "greedy_prefix", "greedy_len")}}
    cal = replace(prior.calibration, greedy_sums=greedy, greedy_mean=mean, meta=meta)
    cal.check(len(blocks))
    return replace(prior, calibration=cal, meta={**prior.meta, "format_version": cal.format_version})


def _extension(model: nn.Module, tokenizer, prior: Prior, settings: dict):
    """What a stage added to a calibrated prior reads: ``(options, blocks, tokenizer, seed)``, the
    prior checked against the model and the seed its calibration sampled with."""
    blocks = find_ffn_blocks(model)
    prior.check_matches(model, blocks)
    if prior.calibration is None:
        raise ValueError("this prior has no selection calibration (an older file): rebuild it with `glass prior MODEL`")
    tokenizer = tokenizer if tokenizer is not None else token_ids_of(model)
    return {**DEFAULTS, **settings}, blocks, tokenizer, int(prior.calibration.meta.get("seed", 0))


@torch.no_grad()
def with_bank(model: nn.Module, tokenizer, prior: Prior, rows: int = BANK_ROWS, **settings) -> Prior:
    """``prior`` with each of ``rows`` greedy replies' own statistic in its calibration (the global
    view of ``glass-neighbours``; ``greedy_text.greedy_bank``), the rest unchanged."""
    opts, blocks, tokenizer, seed = _extension(model, tokenizer, prior, settings)
    sums, tokens = greedy_bank(model, tokenizer, blocks, seed, rows, opts["greedy_prefix"], opts["greedy_len"])
    # the file keeps the bank in half precision: rounded here too, so a prior just built selects as its file will
    cal = replace(prior.calibration, bank_sums=sums.half().float(), bank_tokens=tokens.float(), neighbours_check=None,  # checked anew
                  meta={**prior.calibration.meta, "bank_rows": rows})
    cal.check(len(blocks))
    return replace(prior, calibration=cal, meta={**prior.meta, "format_version": cal.format_version})
