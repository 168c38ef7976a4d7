"""Selection on the real SmolLM2 model: the paper's methods stay exact, the calibrated
``glass`` (per-layer density) and ``glass-refresh`` (per-layer density, adaptive lam) read
their prior's calibration, and priors of every file format load."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch

from glass_llm.adapters import find_ffn_blocks
from glass_llm.calibrate import ActivationRecorder
from glass_llm.calibration import calibrate_prior, ensure_calibrated
from glass_llm.calibration_data import Calibration
from glass_llm.config import GlassConfig
from glass_llm.engine import apply_glass
from glass_llm.prior import PriorError, load_prior, save_prior
from glass_llm.ranking import select
from glass_llm.schedule import ScheduleError, budget
from glass_llm.selection import Selector, build_selector
from glass_llm.stats import finalize

SMALL = {"n_seqs": 4, "seq_len": 40, "horizon": 16, "stride": 8, "gain_rows": 2, "gain_len": 16, "err_tokens": 128,
         "greedy_rows": 3, "greedy_prefix": 4, "greedy_len": 12}
TEXT = ["The river Thames flows through London and reaches the North Sea at its estuary.",
        "Photosynthesis lets plants turn light, water and carbon dioxide into sugar."]


@pytest.fixture(scope="module")
def calibrated(smollm, smollm_prior):
    model, tok = smollm
    return calibrate_prior(model, tok, replace(smollm_prior, calibration=None), progress=False, **SMALL)


@pytest.fixture(scope="module")
def prompt_sums(smollm):
    """Per-row prompt statistics of two real prompts of different lengths (left-padded)."""
    model, tok = smollm
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXT]
    enc = [enc[0][:6], enc[1][:14]]
    width = max(len(e) for e in enc)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, width - len(e):], mask[r, width - len(e):] = torch.tensor(e), 1
    rec = ActivationRecorder(model)
    rec.per_row = True
    with rec:
        rec.run(model, ids, mask)
    return rec.take_row_sums(), mask.sum(1)


def _selector(model, prior, method, density=0.5, lam=None):
    blocks = find_ffn_blocks(model)
    config = GlassConfig(method=method, density=density, lam=lam, prior=prior)
    spec, lam, statistic = config.resolved()
    glob = prior.scores_for(statistic)
    return build_selector(blocks, config, spec, lam, statistic, list(glob), None, prior=prior), blocks


def test_paper_method_is_unchanged_bit_for_bit(smollm, calibrated, prompt_sums):
    model, _ = smollm
    sums, n = prompt_sums
    sel, blocks = _selector(model, calibrated, "glass-a")
    assert not sel.adaptive and sel.k == [768] * len(blocks)
    glob = calibrated.scores_for("activation")
    for i in range(len(blocks)):
        expected = select(finalize(sums[i], "activation"), glob[i], 0.5, 0.5)
        assert torch.equal(sel.choose(i, sums[i], n), expected)


def test_adaptive_lam_reduces_to_the_fixed_lam(smollm, calibrated, prompt_sums):
    model, _ = smollm
    sums, n = prompt_sums
    blocks = find_ffn_blocks(model)
    glob = list(calibrated.scores_for("activation"))
    for lam in (0.3, 0.5):
        table = torch.full((len(blocks), 7), lam)
        sel = Selector(blocks, [700] * len(blocks), 0.5, "activation", glob, lam_table=table,
                       lam_windows=torch.tensor([1.0, 2, 4, 8, 16, 32, 64]))
        for i in (0, 7, len(blocks) - 1):
            expected = select(finalize(sums[i], "activation"), glob[i], lam, 0.5, k=700)
            assert torch.equal(sel.choose(i, sums[i], n), expected)


def _checked(prior, ratio: float):
    """``prior`` whose schedule check measured ``ratio`` (schedule / uniform) at every density."""
    cal = prior.calibration
    return replace(prior, calibration=replace(cal, check_densities=torch.tensor([0.3, 0.5, 0.7, 0.9]),
                                              check_ratio=torch.full((4,), ratio),
                                              check_upper=torch.full((4,), ratio * 1.05)))


def test_calibrated_glass_schedule_uses_schedule_and_fixed_lam(smollm, calibrated, prompt_sums):
    model, _ = smollm
    sums, n = prompt_sums
    glass, blocks = _selector(model, _checked(calibrated, 0.9), "glass-schedule")
    d_ff = [b.d_ff for b in blocks]
    assert not glass.adaptive and sum(glass.k) == budget(0.5, d_ff) and len(set(glass.k)) > 1
    glob = calibrated.scores_for("activation")
    for i in (0, len(blocks) - 1):  # the paper's fusion at the fixed lam, on the block's own k
        expected = select(finalize(sums[i], "activation"), glob[i], 0.5, 0.5, k=glass.k[i])
        assert torch.equal(glass.choose(i, sums[i], n), expected)
    # where the check keeps one density, glass selects exactly as the paper's glass-a
    same, _ = _selector(model, _checked(calibrated, 1.1), "glass-schedule")
    paper, _ = _selector(model, calibrated, "glass-a")
    assert same.k == paper.k
    for i in range(len(blocks)):
        assert torch.equal(same.choose(i, sums[i], n), paper.choose(i, sums[i], n))


def test_refresh_method_uses_schedule_and_per_row_lam(smollm, calibrated, prompt_sums):
    model, _ = smollm
    sums, n = prompt_sums
    calibrated = _checked(calibrated, 0.9)
    sel, blocks = _selector(model, calibrated, "glass-refresh")
    d_ff = [b.d_ff for b in blocks]
    assert sel.adaptive and sum(sel.k) == budget(0.5, d_ff) and len(set(sel.k)) > 1
    lam = sel.lam_of(0, n)
    assert lam.shape == (2,) and bool(((lam >= 0) & (lam <= 1)).all())
    chosen = sel.choose(0, sums[0], n)
    assert chosen.shape == (2, sel.k[0])
    with pytest.raises(ValueError, match="n_tokens"):
        sel.choose(0, sums[0])
    # an explicit per-layer tuple overrides the schedule
    tup, _ = _selector(model, calibrated, "glass-refresh", density=tuple([0.25] * len(blocks)))
    assert tup.k == [384] * len(blocks)
    # the ablations: one lever each, and both without refresh
    s_only, _ = _selector(model, calibrated, "glass-schedule")
    a_only, _ = _selector(model, calibrated, "glass-adaptive")
    both, _ = _selector(model, calibrated, "glass-schedule-adaptive")
    assert s_only.k == sel.k and not s_only.adaptive
    assert a_only.adaptive and a_only.k == [768] * len(blocks)
    assert both.adaptive and both.k == sel.k
    for i in (0, len(blocks) - 1):
        assert torch.equal(both.choose(i, sums[i], n), sel.choose(i, sums[i], n))


@pytest.mark.parametrize("method,share", [("glass-a", False), ("glass-i", False), ("griffin", False),
                                          ("global", False), ("glass-refresh", False), ("glass-refresh", True),
                                          ("glass-score", False)])
def test_all_blocks_at_once_choose_what_each_block_chooses(smollm, calibrated, prompt_sums, method, share):
    """The stacked selection of every block (what the engine runs) equals block-by-block
    ``choose``, neuron for neuron, with a per-layer schedule, per-row adaptive lams, one
    set for the batch, score fusion and the impact statistic."""
    model, _ = smollm
    sums, n = prompt_sums
    blocks = find_ffn_blocks(model)
    config = GlassConfig(method=method, density=0.5, prior=_checked(calibrated, 0.9), share_batch=share)
    spec, lam, statistic = config.resolved()
    from glass_llm.adapters import down_column_norms
    norms = [down_column_norms(b) for b in blocks] if statistic == "impact" else None
    sel = build_selector(blocks, config, spec, lam, statistic, list(calibrated.scores_for(statistic)), norms,
                         prior=config.prior)
    local = [sums[i] for i in range(len(blocks))]
    k = [max(1, x - 37 * (i % 3)) for i, x in enumerate(sel.k)]  # counts that differ block to block
    together = sel.choose_all(local, n, k)
    for i in range(len(blocks)):
        assert torch.equal(together[i], sel.choose(i, local[i], n, k[i])), (method, i)
    if sel.uses_prompt:
        assert together[0].shape == ((1 if share else 2), k[0])
        with pytest.raises(ValueError, match="one statistic and one count per block"):
            sel.choose_all(local[:-1], n)


def test_schedule_is_used_only_where_its_check_pays(smollm, calibrated):
    model, _ = smollm
    cal = calibrated.calibration
    # the real check: one finite positive ratio per checked density, and the decision follows it
    assert cal.check_ratio.shape == cal.check_densities.shape == cal.check_upper.shape == (4,)
    assert bool((cal.check_ratio > 0).all()) and bool((cal.check_upper >= cal.check_ratio).all())
    sel, blocks = _selector(model, calibrated, "glass-stored-schedule", density=0.5)
    uniform = [768] * len(blocks)
    assert (sel.k != uniform) == bool(cal.check_upper[1] < 1)
    # forced outcomes: a schedule not shown better is not used, one shown better is
    assert _selector(model, _checked(calibrated, 1.1), "glass-stored-schedule")[0].k == uniform
    assert _selector(model, _checked(calibrated, 1.1), "glass-schedule")[0].k == uniform
    # bound 1.02: not shown better
    assert _selector(model, _checked(calibrated, 0.97), "glass-stored-schedule")[0].k == uniform
    assert _selector(model, _checked(calibrated, 0.9), "glass-stored-schedule")[0].k != uniform
    # a calibration without a check (prior format 2) keeps one density, and says why
    old = replace(calibrated, calibration=replace(cal, check_densities=None, check_ratio=None, check_upper=None))
    with pytest.warns(UserWarning, match="predates the schedule check"):
        assert _selector(model, old, "glass-stored-schedule")[0].k == uniform
    assert any("schedule check" in line for line in cal.summary())


def test_calibration_tables(smollm, calibrated):
    model, _ = smollm
    cal = calibrated.calibration
    n = len(find_ffn_blocks(model))
    assert cal.profile.shape == (n, cal.grid.numel()) and cal.lam.shape == (n, cal.windows.numel())
    assert bool((cal.profile >= 0).all()) and bool(((cal.lam >= 0) & (cal.lam <= 1)).all())
    # the sparser, the worse: each block's estimated KL falls as its density grows
    assert bool((cal.profile[:, 0] >= cal.profile[:, -1]).all())
    assert any("block" in line for line in cal.summary())


def test_prior_formats_round_trip(tmp_path, smollm, calibrated):
    model, _ = smollm
    new = save_prior(calibrated, tmp_path / "v5.safetensors")
    loaded = load_prior(new)
    assert loaded.meta["format_version"] == 5
    assert torch.equal(loaded.calibration.lam, calibrated.calibration.lam.float())
    assert torch.equal(loaded.calibration.check_ratio, calibrated.calibration.check_ratio.float())
    assert torch.equal(loaded.calibration.greedy_sums, calibrated.calibration.greedy_sums.float())
    assert torch.equal(loaded.calibration.greedy_mean, calibrated.calibration.greedy_mean.float())
    assert loaded.calibration.greedy_tokens == calibrated.calibration.greedy_tokens > 0
    v4 = load_prior(save_prior(replace(calibrated, calibration=replace(calibrated.calibration, greedy_mean=None)),
                               tmp_path / "v4.safetensors"))
    assert v4.meta["format_version"] == 4 and v4.calibration.greedy_mean is None
    assert torch.equal(v4.calibration.greedy_sums, loaded.calibration.greedy_sums)
    v3 = load_prior(save_prior(replace(calibrated, calibration=replace(calibrated.calibration, greedy_sums=None,
                                                                      greedy_mean=None)),
                               tmp_path / "v3.safetensors"))
    assert v3.meta["format_version"] == 3 and v3.calibration.greedy_sums is None
    assert torch.equal(v3.calibration.check_ratio, loaded.calibration.check_ratio)
    unchecked = replace(calibrated.calibration, check_densities=None, check_ratio=None, check_upper=None,
                        greedy_sums=None, greedy_mean=None)
    v2 = load_prior(save_prior(replace(calibrated, calibration=unchecked), tmp_path / "v2.safetensors"))
    assert v2.meta["format_version"] == 2 and v2.calibration.check_ratio is None
    assert torch.equal(v2.calibration.profile, loaded.calibration.profile)
    old = save_prior(replace(calibrated, calibration=None), tmp_path / "v1.safetensors")
    loaded_old = load_prior(old)
    assert loaded_old.calibration is None and loaded_old.meta["format_version"] == 1
    assert torch.equal(loaded_old.sums, loaded.sums)


def test_old_prior_is_calibrated_with_a_message(smollm, calibrated):
    model, tok = smollm
    old = replace(calibrated, calibration=None)
    buf = io.StringIO()
    new = ensure_calibrated(model, tok, old, stream=buf, **SMALL)
    assert "no selection calibration" in buf.getvalue() and new.calibration is not None
    assert ensure_calibrated(model, tok, new, stream=buf) is new
    with pytest.raises(ValueError, match="rebuild it"):
        _selector(model, old, "glass")


def test_glass_reads_the_prior_of_greedy_text(smollm, calibrated, prompt_sums):
    """``glass``, ``glass-greedy`` and ``global-greedy`` take their global view from the statistic
    of greedy text; ``glass-schedule`` and glass-a keep the paper's prior of temperature-1 samples."""
    from glass_llm.methods import GLOBAL_SOURCES, get_method

    model, _ = smollm
    blocks = find_ffn_blocks(model)
    cal = calibrated.calibration
    greedy = GLOBAL_SOURCES["greedy"](blocks, calibrated, "activation", 0)
    assert all(torch.equal(g, finalize(s, "activation")) for g, s in zip(greedy, cal.greedy_sums))
    paper = calibrated.scores_for("activation")
    assert not all(torch.equal(ranks_of(g), ranks_of(p)) for g, p in zip(greedy, paper))
    assert get_method("glass").global_source == get_method("glass-greedy").global_source == "greedy"
    assert get_method("glass-schedule").global_source == get_method("glass-a").global_source == "prior"
    assert get_method("global-greedy").needs_prior and get_method("glass-a-greedy").needs_prior
    handle = apply_glass(model, GlassConfig(method="global-greedy", density=0.5, prior=calibrated))
    try:
        for i, b in enumerate(blocks):
            assert torch.equal(handle.selector.choose(i, None)[0], select(None, greedy[i], 0.0, 0.5))
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="no statistic of greedy text"):
        GLOBAL_SOURCES["greedy"](blocks, replace(calibrated, calibration=replace(cal, greedy_sums=None)),
                                 "activation", 0)


@pytest.mark.parametrize("missing", [("greedy_sums", "greedy_mean"), ("greedy_mean",)])
def test_older_prior_gets_the_greedy_statistic_with_a_message(smollm, calibrated, missing):
    """A prior of format 3 (no greedy statistic) or 4 (no mean activation) gains the same
    greedy statistic and mean a new calibration computes (same seed, same sequences), once,
    with a message; the rest of its calibration is kept."""
    model, tok = smollm
    old = replace(calibrated, calibration=replace(calibrated.calibration, **{k: None for k in missing}))
    buf = io.StringIO()
    new = ensure_calibrated(model, tok, old, stream=buf, **SMALL)
    assert "no statistic or mean activation of greedy text" in buf.getvalue()
    assert torch.allclose(new.calibration.greedy_sums, calibrated.calibration.greedy_sums, rtol=1e-5, atol=1e-6)
    assert torch.allclose(new.calibration.greedy_mean, calibrated.calibration.greedy_mean, rtol=1e-5, atol=1e-6)
    assert new.calibration.greedy_tokens == calibrated.calibration.greedy_tokens
    assert torch.equal(new.calibration.lam, calibrated.calibration.lam) and new.meta["format_version"] == 5


def ranks_of(scores):
    from glass_llm.ranking import ranks

    return ranks(scores.float())


def test_calibration_for_another_model_is_refused(smollm, calibrated):
    model, _ = smollm
    cal = calibrated.calibration
    other = Calibration(grid=cal.grid, profile=cal.profile[:18], windows=cal.windows, lam=cal.lam[:18],
                        score_lam=cal.score_lam[:18])
    with pytest.raises(ScheduleError, match="another model"):
        _selector(model, replace(calibrated, calibration=other), "glass")
    with pytest.raises(ValueError, match="FFN blocks"):
        _selector(model, calibrated, "glass", density=(0.5, 0.5))


def test_broken_calibration_in_file_is_a_prior_error(tmp_path, calibrated):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = save_prior(calibrated, tmp_path / "p.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    del tensors["calibration.lam"]
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(PriorError, match="incomplete"):
        load_prior(path)


def test_prompt_lam_grows_with_the_prompt_length(smollm, calibrated, prompt_sums):
    """``glass-prompt-lam`` is ``glass-fixed-lam`` at lam 0.25 for prompts of up to 8 tokens and at 0.5 from
    32, linear in log length between; the user's lam tilts it as it tilts an adaptive table."""
    import math

    from glass_llm.methods import PROMPT_LAM_TOKENS, PROMPT_LAMS, MethodSpec, register_method

    model, _ = smollm
    sums, n = prompt_sums  # rows of 6 and 14 tokens
    sel, blocks = _selector(model, calibrated, "glass-prompt-lam")
    low, _ = _selector(model, calibrated, "glass-fixed-lam", lam=PROMPT_LAMS[0])
    high, _ = _selector(model, calibrated, "glass-fixed-lam", lam=PROMPT_LAMS[1])
    assert sel.k == low.k == high.k and PROMPT_LAM_TOKENS == (8, 32)
    expected = PROMPT_LAMS[0] + (PROMPT_LAMS[1] - PROMPT_LAMS[0]) * math.log(14 / 8) / math.log(4)
    at_14 = []
    for i in range(len(blocks)):
        lam = sel.lam_of(i, torch.tensor([6, 14, 32, 64]))
        assert torch.allclose(lam, torch.tensor([0.25, expected, 0.5, 0.5]), atol=1e-6)
        # the 6-token row selects as glass at 0.25; the 14-token row, counted as 32, as glass at 0.5
        assert torch.equal(sel.choose(i, sums[i][:1], n[:1]), low.choose(i, sums[i][:1], n[:1]))
        assert torch.equal(sel.choose(i, sums[i][1:], torch.tensor([32])), high.choose(i, sums[i][1:], n[1:]))
        chosen = sel.choose(i, sums[i][1:], n[1:])
        at_14.append(not torch.equal(chosen, low.choose(i, sums[i][1:], n[1:]))
                     and not torch.equal(chosen, high.choose(i, sums[i][1:], n[1:])))
    assert any(at_14)  # between the two: some block selects as neither
    tilted, _ = _selector(model, calibrated, "glass-prompt-lam", lam=0.7)
    assert float(tilted.lam_of(0, torch.tensor([8]))[0]) > 0.25
    with pytest.raises(ValueError, match="exclude each other"):
        register_method(MethodSpec("bad", "both lams", adaptive=True, prompt_lam="rule"))
    with pytest.raises(ValueError, match="'rule' or 'checked'"):
        register_method(MethodSpec("bad", "unknown rule", prompt_lam="by-length"))
