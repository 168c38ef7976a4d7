"""The short-prompt lam check (``lam_choice``): measured on the real SmolLM2 model's own text,
stored with the prior (format 6), and read by ``glass``: a checked lower lam up to 8 prompt
tokens, 0.5 from 32, and exactly the fixed-lam selection where the check chose nothing."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch

from glass_llm.adapters import find_ffn_blocks
from glass_llm.calibrate import ActivationRecorder
from glass_llm.calibration_data import NEUTRAL_LAM
from glass_llm.engine import GlassConfig
from glass_llm.lam_choice import CANDIDATES, check_short_lam, reply_kl, self_written
from glass_llm.prior import load_prior, save_prior
from glass_llm.selection import build_selector

TEXT = ["The river Thames flows through London and reaches the North Sea at its estuary.",
        "Photosynthesis lets plants turn light, water and carbon dioxide into sugar, and it releases oxygen "
        "into the air that animals breathe, so the two kingdoms depend on each other."]


def _with_check(prior, lams, ratios, uppers):
    cal = replace(prior.calibration, lam_check_lams=torch.tensor(lams), lam_check_ratio=torch.tensor(ratios),
                  lam_check_upper=torch.tensor(uppers))
    return replace(prior, calibration=cal)


def _selector(model, prior, method, lam=None):
    blocks = find_ffn_blocks(model)
    config = GlassConfig(method=method, density=0.5, lam=lam, prior=prior)
    spec, lam, statistic = config.resolved()
    glob = prior.scores_for(statistic, prior.calibration.greedy_sums)
    return build_selector(blocks, config, spec, lam, statistic, list(glob), None, prior=prior), blocks


@pytest.fixture(scope="module")
def prompt_sums(smollm):
    """Per-row prompt statistics of a 6-token and a 32-token real prompt (left-padded)."""
    model, tok = smollm
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXT]
    enc = [enc[0][:6], enc[1][:32]]
    assert len(enc[1]) == 32
    ids = torch.zeros(2, 32, dtype=torch.long)
    mask = torch.zeros(2, 32, dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, 32 - len(e):], mask[r, 32 - len(e):] = torch.tensor(e), 1
    rec = ActivationRecorder(model)
    rec.per_row = True
    with rec:
        rec.run(model, ids, mask)
    return rec.take_row_sums(), mask.sum(1)


def test_short_lam_is_a_candidate_only_where_it_measured_better(smollm_prior):
    cal = smollm_prior.calibration
    assert _with_check(smollm_prior, [0.25], [0.92], [0.97]).calibration.short_lam == 0.25
    assert _with_check(smollm_prior, [0.25], [0.97], [1.02]).calibration.short_lam == NEUTRAL_LAM
    assert _with_check(smollm_prior, [0.25], [1.0], [float("inf")]).calibration.short_lam == NEUTRAL_LAM
    # of two candidates measured better, the lower ratio; one not measured better never counts
    assert _with_check(smollm_prior, [0.1, 0.25], [0.90, 0.93], [0.99, 0.95]).calibration.short_lam == 0.1
    assert _with_check(smollm_prior, [0.1, 0.25], [0.85, 0.93], [1.01, 0.95]).calibration.short_lam == 0.25
    assert replace(cal, lam_check_lams=None, lam_check_ratio=None, lam_check_upper=None).short_lam is None
    n = cal.n_blocks
    with pytest.raises(ValueError, match="together"):
        replace(cal, lam_check_upper=None).check(n)
    for bad in ([1.2], [0.25, 0.1]):
        with pytest.raises(ValueError, match="invalid values"):
            _with_check(smollm_prior, bad, [0.9], [0.95]).calibration.check(n)
    with pytest.raises(ValueError, match="invalid values"):  # upper end below the ratio
        _with_check(smollm_prior, [0.25], [0.9], [0.8]).calibration.check(n)


def test_cached_prior_carries_the_check_and_it_round_trips(smollm, smollm_prior, tmp_path):
    """``get_or_build_prior`` (the session fixture) stores the check (format 6; 7 with the schedule of
    greedy replies, ``test_reply_schedule``): the candidates' ratios against lam 0.5 on the rows the model wrote, and the choice in ``glass prior --show``."""
    cal = smollm_prior.calibration
    # 9: with the bank of replies, checked; 10 also with the activation covariance (a prior built since)
    assert cal.format_version == smollm_prior.meta["format_version"] >= 9
    assert cal.lam_check_lams.tolist() == list(CANDIDATES)
    assert 2 <= cal.meta["lam_check"]["rows_used"] <= cal.meta["lam_check"]["rows"]
    assert bool((cal.lam_check_upper >= cal.lam_check_ratio).all()) and cal.short_lam in CANDIDATES + (NEUTRAL_LAM,)
    assert any(f"fuses at lam {cal.short_lam:g}" in line for line in cal.summary())
    neutral = _with_check(smollm_prior, [0.25], [0.97], [1.02]).calibration
    assert any("glass fuses at lam 0.5 for every prompt length" in line for line in neutral.summary())
    loaded = load_prior(save_prior(smollm_prior, tmp_path / "v6.safetensors")).calibration
    assert torch.equal(loaded.lam_check_ratio, cal.lam_check_ratio) and loaded.short_lam == cal.short_lam
    v5 = replace(cal, lam_check_lams=None, lam_check_ratio=None, lam_check_upper=None)
    old = load_prior(save_prior(replace(smollm_prior, calibration=v5), tmp_path / "v5.safetensors"))
    assert old.meta["format_version"] == 5 and old.calibration.short_lam is None


def test_glass_fuses_at_the_checked_lam_by_prompt_length(smollm, smollm_prior, prompt_sums):
    """With a checked short lam of 0.25, ``glass-stored-schedule`` (``glass`` with the stored schedule,
    of the same lam) selects for a 6-token prompt as ``glass-fixed-lam`` at 0.25 and for a 32-token
    prompt as at 0.5. Where the check chose nothing, and for a prior without the check (with a
    warning), it is ``glass-fixed-lam`` bit for bit."""
    model, _ = smollm
    sums, n = prompt_sums
    assert n.tolist() == [6, 32]
    low_prior = _with_check(smollm_prior, [0.25], [0.9], [0.95])
    sel, blocks = _selector(model, low_prior, "glass-stored-schedule")
    low, _ = _selector(model, low_prior, "glass-fixed-lam", lam=0.25)
    mid, _ = _selector(model, low_prior, "glass-fixed-lam")
    assert sel.adaptive and not mid.adaptive and sel.k == low.k == mid.k
    differs = []
    for i in range(len(blocks)):
        assert torch.allclose(sel.lam_of(i, n), torch.tensor([0.25, 0.5]))
        assert torch.equal(sel.choose(i, sums[i][:1], n[:1]), low.choose(i, sums[i][:1], n[:1]))
        assert torch.equal(sel.choose(i, sums[i][1:], n[1:]), mid.choose(i, sums[i][1:], n[1:]))
        differs.append(not torch.equal(low.choose(i, sums[i][:1], n[:1]), mid.choose(i, sums[i][:1], n[:1])))
    assert any(differs)  # the checked lam changes what a short prompt selects
    glass, _ = _selector(model, low_prior, "glass")  # glass fuses at the same lams, on its own schedule
    assert glass.adaptive and torch.equal(glass.lam_of(0, n), sel.lam_of(0, n))
    for prior in (_with_check(smollm_prior, [0.25], [0.97], [1.02]), None):
        if prior is None:
            cal = replace(smollm_prior.calibration, lam_check_lams=None, lam_check_ratio=None, lam_check_upper=None)
            prior = replace(smollm_prior, calibration=cal)
            with pytest.warns(UserWarning, match="predates the short-prompt lam check"):
                sel, _ = _selector(model, prior, "glass-stored-schedule")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                sel, _ = _selector(model, prior, "glass-stored-schedule")
        assert not sel.adaptive
        for i in range(len(blocks)):
            assert torch.equal(sel.choose(i, sums[i], n), mid.choose(i, sums[i], n))


def test_the_checked_lam_is_part_of_an_evaluation_journal_key(smollm_prior):
    """A journal of ``glass`` written under one short-prompt lam is never resumed under another."""
    from glass_llm.evaluate import EvalSettings
    from glass_llm.evaluation.plan import WorkItem, settings_key

    settings = EvalSettings(model="m", corpus="c", methods=("dense", "glass"), prompt_tokens=(8,))
    items = [WorkItem(8, 0, (0,), ((1, 2, 3),))]
    keys = {settings_key(settings, items, {"m": 1}, _with_check(smollm_prior, [0.25], [r], [u]))
            for r, u in ((0.9, 0.95), (0.97, 1.02))}
    assert len(keys) == 2


def test_check_teacher_forces_glass_on_the_models_own_replies(smollm, smollm_prior):
    """The rows are the model's: a sampled start, then greedy replies of the asked length; the
    KL is zero for the dense model and positive for glass at 0.5, and the two lams differ."""
    model, tok = smollm
    prompts, mask, replies = self_written(model, tok, 8, 16, 4)
    assert 2 <= prompts.shape[0] <= 4 and replies.shape == (prompts.shape[0], 16)
    assert bool((mask.sum(1) >= 9).all())  # the model's start plus the 8 sampled tokens
    configs = [GlassConfig(method="dense"), GlassConfig(method="glass-fixed-lam", density=0.5, lam=0.5),
               GlassConfig(method="glass-fixed-lam", density=0.5, lam=0.25)]
    kl = reply_kl(model, prompts, mask, replies, configs, smollm_prior, chunk=2)
    assert kl.shape == (3, prompts.shape[0]) and float(kl[0].abs().max()) < 1e-6
    assert bool((kl[1] > 1e-3).all()) and not torch.equal(kl[1], kl[2])
    checked = check_short_lam(model, tok, smollm_prior, rows=4, gen_tokens=16, chunk=2)
    ratio = (kl[2] / kl[1]).log().mean().exp()
    assert checked.calibration.meta["lam_check"]["rows_used"] == prompts.shape[0]
    assert abs(float(checked.calibration.lam_check_ratio[0]) - float(ratio)) < 1e-4
    with pytest.raises(ValueError, match="complete calibration"):
        check_short_lam(model, tok, replace(smollm_prior, calibration=None))
    with pytest.raises(ValueError, match="unknown lam check setting"):
        check_short_lam(model, tok, smollm_prior, row=4)


def test_a_cached_prior_without_the_check_gets_it_once(smollm, smollm_prior, tmp_path, monkeypatch, capsys):
    from glass_llm import lam_choice, neighbours_check, reply_schedule
    from glass_llm.build import get_or_build_prior
    from glass_llm.prior_cache import default_prior_path

    monkeypatch.setenv("GLASS_LLM_CACHE", str(tmp_path))
    monkeypatch.setitem(lam_choice.DEFAULTS, "rows", 4)
    monkeypatch.setitem(neighbours_check.DEFAULTS, "rows", 4)
    monkeypatch.setitem(neighbours_check.DEFAULTS, "gen_tokens", 8)
    monkeypatch.setitem(neighbours_check.DEFAULTS, "extra_rows", 4)
    monkeypatch.setitem(lam_choice.DEFAULTS, "gen_tokens", 8)
    for key, value in (("gain_rows", 3), ("check_rows", 3), ("gen_tokens", 8)):
        monkeypatch.setitem(reply_schedule.DEFAULTS, key, value)
    model, tok = smollm
    cal = replace(smollm_prior.calibration, lam_check_lams=None, lam_check_ratio=None, lam_check_upper=None)
    path = save_prior(replace(smollm_prior, calibration=cal),
                      default_prior_path("smollm2-135m", "self", smollm_prior.n_tokens))
    got = get_or_build_prior(model, tok, "smollm2-135m", n_tokens=smollm_prior.n_tokens, progress=False)
    err = capsys.readouterr().err
    assert "short-prompt lam" in err and "greedy replies" in err  # the reply schedule follows a new lam check
    assert "nearest greedy replies" in err  # and so does the check of the nearest replies, which measures glass
    assert got.calibration.short_lam is not None and load_prior(path).meta["format_version"] == smollm_prior.meta["format_version"]
    assert torch.equal(got.calibration.greedy_sums, smollm_prior.calibration.greedy_sums)
    again = get_or_build_prior(model, tok, "smollm2-135m", n_tokens=smollm_prior.n_tokens, progress=False)
    assert "short-prompt lam" not in capsys.readouterr().err
    assert torch.equal(again.calibration.lam_check_ratio, got.calibration.lam_check_ratio)
