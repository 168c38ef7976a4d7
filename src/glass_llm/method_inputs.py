"""What a selection method reads before it can run: the prior (loaded, checked against the
model and, for an older file, calibrated once), the global scores of its global source and,
for a compensated method, the mean activation it adds back. ``apply_glass`` calls
``method_inputs`` once; nothing here runs per request."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from .adapters import FFNBlock
from .config import GlassConfig
from .errors import GlassError
from .methods import GLOBAL_SOURCES, PRIOR_SOURCES, MethodSpec
from .prior import load_prior


def _prior_for(model: nn.Module, blocks: list[FFNBlock], config: GlassConfig, spec: MethodSpec, lam: float):
    """The prior the method reads (``None`` when it reads none), checked against the model and
    carrying the selection calibration the method needs."""
    if spec.dense or not ((spec.global_source in PRIOR_SOURCES and (lam < 1 or spec.schedule)) or spec.compensate):
        return None
    prior = config.prior
    if isinstance(prior, (str, os.PathLike)):
        prior = load_prior(prior)
    if prior is None:
        return None
    prior.check_matches(model, blocks)
    if prior.sums.shape[0] != len(blocks):
        raise GlassError("prior and model disagree on the number of FFN blocks")
    greedy = spec.global_source == "greedy"
    cal = prior.calibration
    if ((cal is None and (spec.schedule or spec.adaptive or greedy or spec.compensate))
            or (cal is not None and ((greedy and cal.greedy_sums is None)
                                     or (spec.compensate and cal.greedy_mean is None)))):
        from .calibration import ensure_calibrated  # an older prior: calibrate it now, once per process

        prior.calibration = ensure_calibrated(model, None, prior).calibration
    if (spec.neighbours and not spec.neighbours_checked and 0 < lam < 1 and prior.calibration is not None
            and prior.calibration.bank_sums is None):  # glass uses a bank only where a check of it passed
        from .calibration import BANK_ROWS, with_bank

        print(f"this prior keeps no greedy replies one by one (format 7 or older), which {spec.name!r} reads: writing "
              f"{BANK_ROWS} of them now (about two minutes for a 135M model on 2 CPU cores; a cached prior keeps them; "
              "for a file you named, `glass prior MODEL --recalibrate FILE`)", file=sys.stderr, flush=True)
        prior.calibration = with_bank(model, None, prior).calibration
    if spec.comp_linear and prior.calibration is not None and prior.calibration.lin_cov is None:
        from .calibration import BANK_ROWS
        from .covariance import with_covariance

        print(f"this prior keeps no activation covariance (format 9 or older), which {spec.name!r} reads: measuring it "
              f"on {BANK_ROWS} greedy replies now, in this process only (a few minutes for a 135M model on 2 CPU "
              "cores); `glass prior MODEL --recalibrate [FILE]` stores it in the file", file=sys.stderr, flush=True)
        prior.calibration = with_covariance(model, None, prior).calibration
    return prior


def linear_blocks(cal, n: int) -> set[int]:
    """The indices of the ``n`` blocks (0: all) with the largest loss on greedy replies (``cal.reply_loss``; for a
    prior without it, the stored profile at the density nearest 0.5): where a linear prediction pays most."""
    loss = cal.reply_loss if cal.reply_loss is not None else cal.profile[:, int((cal.grid - 0.5).abs().argmin())]
    if not n or n >= loss.numel():
        return set(range(loss.numel()))
    return set(torch.argsort(loss, descending=True, stable=True)[:n].tolist())


def method_inputs(model: nn.Module, blocks: list[FFNBlock], config: GlassConfig, spec: MethodSpec, lam: float,
                  statistic: str) -> tuple[object, list[torch.Tensor] | None, list | None]:
    """``(prior, global_scores, comp)`` for ``spec`` at ``lam``: the global scores one
    (d_ff,) vector per block (``None`` for a method that ranks by the prompt alone), the
    compensation one (d_ff,) mean activation per block, or for ``comp_linear`` one
    (covariance, mean) pair per block, where the method adds back the mean alone ``(None, the mean glass
    adds back)`` (``None`` without compensation)."""
    prior = _prior_for(model, blocks, config, spec, lam)
    global_scores = None
    if not spec.dense and lam < 1 and spec.global_source is not None:
        global_scores = GLOBAL_SOURCES[spec.global_source](blocks, prior, statistic, config.seed)
    comp_means = None
    if spec.compensate and not spec.dense:
        if prior is None:
            raise GlassError(f"method {spec.name!r} needs a global prior: it adds back the mean output of the neurons "
                             "it leaves out, read from the prior (the mean activation of greedy text); build one with "
                             "`glass prior MODEL -o prior.safetensors` and pass prior=... (or --prior FILE)")
        if spec.comp_linear:
            cal = prior.calibration
            where = linear_blocks(cal, config.linear_blocks_of(spec))
            comp_means = [(cal.lin_cov[b.index], cal.lin_mean[b.index]) if b.index in where
                          else (None, cal.greedy_mean[b.index]) for b in blocks]
        else:
            comp_means = [prior.calibration.greedy_mean[b.index] for b in blocks]
    return prior, global_scores, comp_means
