"""The schedule measured on greedy replies (``reply_schedule``): each block's loss on replies the
real SmolLM2 model writes, stored with the prior (format 7), and the per-layer densities that
``glass`` allocates from it where its check passed (``glass-stored-schedule`` from the stored profile)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from glass_llm.adapters import find_ffn_blocks
from glass_llm.calibration_data import REPLY_DENSITY
from glass_llm.engine import GlassConfig
from glass_llm.lam_choice import reply_kl, self_written
from glass_llm.prior import load_prior, save_prior
from glass_llm.reply_schedule import CHECK_DENSITIES, CHECK_OFFSET, GAIN_OFFSET, MEASURE_METHOD, check_reply_schedule
from glass_llm.schedule import allocate, budget
from glass_llm.selection import build_selector

_REPLY = dict(reply_loss=None, reply_check_densities=None, reply_check_ratio=None, reply_check_upper=None)


def _with_reply(prior, losses, uppers):
    cal = replace(prior.calibration, reply_loss=torch.tensor(losses, dtype=torch.float32),
                  reply_check_densities=torch.tensor(CHECK_DENSITIES),
                  reply_check_ratio=torch.tensor([min(u, 0.9) for u in uppers]),
                  reply_check_upper=torch.tensor(uppers))
    return replace(prior, calibration=cal)


def _k(model, prior, method, density=0.5):
    blocks = find_ffn_blocks(model)
    config = GlassConfig(method=method, density=density, prior=prior)
    spec, lam, statistic = config.resolved()
    glob = prior.scores_for(statistic, prior.calibration.greedy_sums)
    return build_selector(blocks, config, spec, lam, statistic, list(glob), None, prior=prior).k


def test_reply_profile_takes_each_blocks_level_from_its_loss(smollm_prior):
    cal = smollm_prior.calibration
    n = cal.n_blocks
    losses = torch.linspace(0.01, 0.3, n)
    new = replace(cal, reply_loss=losses).reply_profile
    g = int((cal.grid - REPLY_DENSITY).abs().argmin())
    assert torch.allclose(new[:, g], losses, rtol=1e-5)
    # each row is the stored row times one factor: the shape of the error curve is kept
    assert torch.allclose(new * cal.profile[:, :1], cal.profile * new[:, :1], rtol=1e-4, atol=1e-9)
    assert replace(cal, **_REPLY).reply_profile is None and not replace(cal, **_REPLY).use_reply_schedule(0.5)
    passed = _with_reply(smollm_prior, losses.tolist(), [0.95, 0.97, 1.05]).calibration
    assert passed.use_reply_schedule(0.3) and passed.use_reply_schedule(0.5) and not passed.use_reply_schedule(0.7)
    with pytest.raises(ValueError, match="together"):
        replace(passed, reply_check_upper=None).check(n)
    with pytest.raises(ValueError, match="does not fit a model"):
        replace(passed, reply_loss=losses[:-1]).check(n)
    with pytest.raises(ValueError, match="does not fit a model"):  # upper end below the ratio
        replace(passed, reply_check_upper=torch.tensor([0.5, 0.5, 0.5])).check(n)


def test_glass_allocates_from_the_reply_profile_where_checked(smollm, smollm_prior):
    """Where the check passed, the per-block counts are the allocation of the reply profile, of the
    requested budget exactly; where it failed, one density; ``glass-stored-schedule`` keeps the stored
    schedule, and so does ``glass`` (with a warning) on a prior without the measurement."""
    model, _ = smollm
    d_ff = [b.d_ff for b in find_ffn_blocks(model)]
    n = len(d_ff)
    losses = [0.3] + [0.02] * (n - 1)  # the first block costs most on these replies
    passed = _with_reply(smollm_prior, losses, [0.95, 0.95, 0.95])
    k = _k(model, passed, "glass")
    assert k == allocate(passed.calibration.reply_profile, passed.calibration.grid, d_ff, 0.5)
    assert sum(k) == budget(0.5, d_ff) and min(k) >= 1 and k != [f // 2 for f in d_ff]
    assert _k(model, passed, "glass-reply-schedule") == k  # the opt-in name selects as glass
    stored = _k(model, smollm_prior, "glass-stored-schedule")
    assert _k(model, passed, "glass-stored-schedule") == stored
    failed = _with_reply(smollm_prior, losses, [1.02, 1.02, 1.02])
    assert _k(model, failed, "glass") == [f // 2 for f in d_ff]
    older = replace(smollm_prior, calibration=replace(smollm_prior.calibration, **_REPLY))
    with pytest.warns(UserWarning, match="--recalibrate"):
        assert _k(model, older, "glass") == stored


def test_cached_prior_carries_the_reply_schedule_and_it_round_trips(smollm_prior, tmp_path):
    cal = smollm_prior.calibration
    # 9: with the bank of replies, checked; 10 also with the activation covariance (a prior built since)
    assert cal.format_version == smollm_prior.meta["format_version"] >= 9
    assert cal.reply_loss.shape == (cal.n_blocks,) and bool((cal.reply_loss > 0).all())
    assert cal.reply_check_densities.tolist() == pytest.approx(list(CHECK_DENSITIES))
    assert any("schedule of greedy replies" in line for line in cal.summary())
    loaded = load_prior(save_prior(smollm_prior, tmp_path / "v7.safetensors")).calibration
    assert torch.equal(loaded.reply_loss, cal.reply_loss) and torch.equal(loaded.reply_check_upper, cal.reply_check_upper)
    old = load_prior(save_prior(replace(smollm_prior, calibration=replace(cal, **_REPLY)), tmp_path / "v6.safetensors"))
    assert old.meta["format_version"] == 6 and old.calibration.reply_loss is None
    assert any("glass allocates from the stored profile until" in line for line in old.calibration.summary())


def test_losses_are_the_one_block_kl_on_the_models_own_replies(smollm, smollm_prior):
    """Block ``i``'s stored loss is the KL of ``glass`` with only block ``i`` at 0.5 on the model's
    greedy replies; the stored check ratio is the schedule's KL over one density's on other replies."""
    model, tok = smollm
    checked = check_reply_schedule(model, tok, smollm_prior, gain_rows=3, check_rows=3, gen_tokens=8, chunk=3)
    cal = checked.calibration
    meta = cal.meta["reply_schedule"]
    assert 1 <= meta["gain_rows_used"] <= 3 and meta["check_rows_used"] <= 3
    prompts, mask, replies = self_written(model, tok, 8, 8, 3, offset=GAIN_OFFSET)
    n = cal.n_blocks
    for i in (0, n - 1):
        one = GlassConfig(method=MEASURE_METHOD, density=tuple(0.5 if j == i else 1.0 for j in range(n)))
        kl = reply_kl(model, prompts, mask, replies, [one], smollm_prior, chunk=3)
        assert abs(float(kl.mean()) - float(cal.reply_loss[i])) < 1e-4 and float(kl.mean()) > 0
    assert bool((cal.reply_check_upper >= cal.reply_check_ratio).all())
    # the check: the schedule of the losses against one density for every block, on other replies
    prompts, mask, replies = self_written(model, tok, 8, 8, 3, offset=CHECK_OFFSET)
    assert prompts.shape[0] == meta["check_rows_used"] >= 2
    d_ff = [b.d_ff for b in find_ffn_blocks(model)]
    c = CHECK_DENSITIES.index(0.5)
    k = allocate(cal.reply_profile, cal.grid, d_ff, 0.5)
    configs = [GlassConfig(method=MEASURE_METHOD, density=tuple(a / f for a, f in zip(k, d_ff))),
               GlassConfig(method=MEASURE_METHOD, density=(0.5,) * n)]
    kl = reply_kl(model, prompts, mask, replies, configs, smollm_prior, chunk=3).clamp_min(1e-9)
    ratio = float((kl[0] / kl[1]).log().mean().exp())
    assert abs(ratio - float(cal.reply_check_ratio[c])) < 1e-4
    with pytest.raises(ValueError, match="short-prompt lam check first"):
        check_reply_schedule(model, tok, replace(smollm_prior, calibration=replace(
            smollm_prior.calibration, lam_check_lams=None, lam_check_ratio=None, lam_check_upper=None)))
    with pytest.raises(ValueError, match="unknown reply schedule setting"):
        check_reply_schedule(model, tok, smollm_prior, rows=3)
