"""The global view of the greedy replies nearest to the prompt (``glass-neighbours``): the pure
math of ``neighbours``, the bank of replies stored with the prior (format 8), the check on the
model's own text that decides whether ``glass`` uses them (format 9), and the methods on the
real SmolLM2 model and Wikipedia-like text."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from glass_llm.adapters import find_ffn_blocks
from glass_llm.calibration import with_bank
from glass_llm.engine import GlassConfig, apply_glass
from glass_llm.intervals import mean_ci
from glass_llm.lam_choice import reply_kl, self_written
from glass_llm.methods import MethodSpec, register_method
from glass_llm.neighbours import mean_statistic, nearest_sums, similarity
from glass_llm.neighbours_check import BASE_METHOD, CHECK_DENSITY, CHECK_METHOD, NEIGHBOURS_OFFSET, check_neighbours
from glass_llm.prior import load_prior, save_prior
from glass_llm.selection import build_selector
from glass_llm.teacher import continuation_logits


def _bank(rows=6, blocks=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(20, 120, (rows,), generator=g).float()
    sums = torch.rand(rows, blocks, d, generator=g) ** 3 * tokens[:, None, None]
    return sums, tokens


def test_nearest_row_of_a_query_is_the_row_it_was_cut_from():
    sums, tokens = _bank()
    for j in range(sums.shape[0]):
        # the same per-token statistic over another number of tokens: the same row, for any length
        query = sums[j:j + 1] / tokens[j] * 7.0
        near = nearest_sums(query, torch.tensor([7.0]), sums, tokens, k=1)
        assert torch.allclose(near, sums[j:j + 1])
    assert torch.allclose(similarity(mean_statistic(sums, tokens), mean_statistic(sums, tokens)).diagonal(),
                          torch.ones(sums.shape[0]))


def test_every_row_is_the_whole_bank_and_k_is_checked():
    sums, tokens = _bank()
    query, n = sums[:2] * 0.5, tokens[:2]
    assert torch.allclose(nearest_sums(query, n, sums, tokens, k=6), sums.sum(0).expand(2, -1, -1), rtol=1e-5)
    for k in (0, 7):
        with pytest.raises(ValueError, match="k must be in"):
            nearest_sums(query, n, sums, tokens, k)
    with pytest.raises(ValueError, match="one model"):
        similarity(mean_statistic(sums, tokens), mean_statistic(sums[:, :2], tokens))


def test_k_nearest_are_the_k_most_similar(smollm_bank):
    sums, tokens = smollm_bank.calibration.bank_sums, smollm_bank.calibration.bank_tokens
    query = sums[3:4] + sums[5:6]
    n = tokens[3:4] + tokens[5:6]
    sim = similarity(mean_statistic(query, n), mean_statistic(sums, tokens))[0]
    top = sim.argsort(descending=True)[:4]
    assert torch.allclose(nearest_sums(query, n, sums, tokens, 4)[0], sums[top].sum(0), rtol=1e-5)
    assert {3, 5} & set(top.tolist())  # a mixture of two replies is near at least one of them


@pytest.fixture(scope="module")
def smollm_bank(smollm, smollm_prior):
    """The test prior with a bank of 12 greedy replies (the default keeps 256)."""
    model, tok = smollm
    return with_bank(model, tok, smollm_prior, rows=12)


def test_bank_round_trips_in_half_precision_and_older_files_load(smollm_bank, tmp_path):
    cal = smollm_bank.calibration
    n_blocks, d_ff = cal.greedy_sums.shape
    assert cal.bank_sums.shape[1:] == (n_blocks, d_ff) and 1 <= cal.bank_sums.shape[0] <= 12
    assert bool((cal.bank_tokens > 0).all()) and cal.format_version == 8
    path = save_prior(smollm_bank, tmp_path / "p.safetensors")
    back = load_prior(path)
    assert back.meta["format_version"] == 8
    # stored in half precision, and rounded so when written: a prior just built selects exactly as its file
    assert torch.equal(back.calibration.bank_sums, cal.bank_sums)
    assert "greedy replies kept one by one" in "\n".join(back.calibration.summary())
    # a format-7 file (no bank) still loads, and the method that needs one says how to add it
    old = replace(smollm_bank, calibration=replace(cal, bank_sums=None, bank_tokens=None))
    old7 = load_prior(save_prior(old, tmp_path / "old.safetensors"))
    assert old7.meta["format_version"] == 7 and old7.calibration.bank_sums is None
    with pytest.raises(ValueError, match="together"):
        replace(cal, bank_tokens=None).check(n_blocks)
    with pytest.raises(ValueError, match="another model"):
        replace(cal, bank_sums=cal.bank_sums[:, :-1]).check(n_blocks)


def test_older_prior_gets_a_clear_error_from_the_selector(smollm, smollm_bank):
    model, _ = smollm
    blocks = find_ffn_blocks(model)
    old = replace(smollm_bank, calibration=replace(smollm_bank.calibration, bank_sums=None, bank_tokens=None))
    config = GlassConfig(method="glass-neighbours", density=0.5, prior=old)
    spec, lam, statistic = config.resolved()
    glob = list(old.scores_for(statistic, old.calibration.greedy_sums))
    with pytest.raises(ValueError, match="--recalibrate"):
        build_selector(blocks, config, spec, lam, statistic, glob, None, prior=old)


def test_a_bank_of_one_reply_repeated_selects_as_the_greedy_prior(smollm, smollm_bank):
    """When every reply in the bank is the prior of greedy text itself, the nearest replies add
    up to a multiple of it: the same ranks, so exactly the sets of ``glass``."""
    model, tok = smollm
    cal = smollm_bank.calibration
    flat = replace(cal, bank_sums=cal.greedy_sums.expand(70, -1, -1).clone(), bank_tokens=torch.full((70,), 100.0))
    prior = replace(smollm_bank, calibration=flat)
    prompt = tok("The river that runs through the old town floods every spring", return_tensors="pt")["input_ids"]
    cont = tok(" and the market moves uphill.", return_tensors="pt", add_special_tokens=False)["input_ids"]
    _, a = continuation_logits(model, prompt, cont, GlassConfig(method="glass-one-prior", density=0.5), prior)
    _, b = continuation_logits(model, prompt, cont, GlassConfig(method="glass-neighbours", density=0.5), prior)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_glass_neighbours_keeps_glass_budget_and_follows_the_prompt(smollm, smollm_prior):
    model, tok = smollm
    assert smollm_prior.calibration.bank_sums is not None  # the cached default prior keeps the bank
    prompts = ["The history of the Roman Empire spans more than a thousand years,",
               "def fibonacci(n):\n    if n < 2:\n        return n\n"]
    sets = {}
    for text in prompts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        for method in ("glass-one-prior", "glass-neighbours"):
            with apply_glass(model, GlassConfig(method=method, density=0.5, prior=smollm_prior)) as handle:
                model(input_ids=ids)  # the prefill: the selection follows it
                sets[text, method] = [s[0] for s in handle.selections]
    for text in prompts:  # the same number of neurons in every block
        assert [len(s) for s in sets[text, "glass-one-prior"]] == [len(s) for s in sets[text, "glass-neighbours"]]
    # two prompts of different kinds meet different replies, so their global views differ
    differ = [not torch.equal(a, b) for a, b in zip(sets[prompts[0], "glass-neighbours"],
                                                    sets[prompts[1], "glass-neighbours"])]
    assert sum(differ) > len(differ) // 2
    # and the sets are not those of the one prior of greedy text
    assert any(not torch.equal(a, b) for a, b in zip(sets[prompts[0], "glass-one-prior"], sets[prompts[0], "glass-neighbours"]))


def test_method_settings_are_checked():
    with pytest.raises(ValueError, match="greedy"):
        register_method(MethodSpec("bad-neighbours", "x", neighbours=4))
    with pytest.raises(ValueError, match=">= 0"):
        register_method(MethodSpec("bad-neighbours-2", "x", global_source="greedy", neighbours=-1))
    with pytest.raises(ValueError, match="neighbours > 0"):
        register_method(MethodSpec("bad-neighbours-3", "x", global_source="greedy", neighbours_checked=True))


def test_the_check_is_the_kl_ratio_of_the_nearest_replies_on_the_models_own_text(smollm, smollm_prior, tmp_path):
    """The stored check is the geometric mean over the model's own replies of the KL of
    ``glass-neighbours`` over that of ``glass-one-prior``, with its upper bound; it round-trips (format 9)."""
    model, tok = smollm
    checked = check_neighbours(model, tok, smollm_prior, rows=4, extra_rows=0, gen_tokens=16, chunk=4)
    cal = checked.calibration
    prompts, mask, replies = self_written(model, tok, 8, 16, 4, offset=NEIGHBOURS_OFFSET)
    assert prompts.shape[0] == cal.meta["neighbours_check"]["rows_used"] >= 2
    configs = [GlassConfig(method=m, density=CHECK_DENSITY) for m in (BASE_METHOD, CHECK_METHOD)]
    kl = reply_kl(model, prompts, mask, replies, configs, smollm_prior, chunk=4).clamp_min(1e-9)
    ratio, upper = cal.neighbours_check.tolist()
    assert abs(float((kl[1] / kl[0]).log().mean().exp()) - ratio) < 1e-4 and upper >= ratio
    assert not torch.equal(kl[0], kl[1])  # the two global views select differently
    back = load_prior(save_prior(checked, tmp_path / "v9.safetensors"))
    assert back.meta["format_version"] >= 9 and torch.equal(back.calibration.neighbours_check, cal.neighbours_check)
    assert any("nearest-replies check" in line for line in back.calibration.summary())
    for bad in ([0.9], [0.0, 1.0], [0.9, 0.8]):  # not a (ratio, upper) pair, no ratio, upper below ratio
        with pytest.raises(ValueError, match="nearest-replies check"):
            replace(cal, neighbours_check=torch.tensor(bad)).check(cal.n_blocks)
    with pytest.raises(ValueError, match="its bank first"):
        check_neighbours(model, tok, replace(smollm_prior, calibration=replace(
            smollm_prior.calibration, bank_sums=None, bank_tokens=None, neighbours_check=None)))
    with pytest.raises(ValueError, match="unknown nearest-replies check setting"):
        check_neighbours(model, tok, smollm_prior, row=4)


def test_the_check_takes_a_second_look_only_where_the_first_leans_towards_the_replies(
        smollm, smollm_prior, monkeypatch):
    """Rows are added once, from other sequences, only where the first look has a ratio below 1
    and an interval that still reaches 1; the stored check is over all rows."""
    from glass_llm import neighbours_check

    model, tok = smollm
    for first, second, looks in (([-0.2, 0.1, -0.1], [-0.1, -0.15, -0.05], 2),  # leaning, not shown: a second look
                                 ([-0.2, -0.21, -0.19], [], 1),  # shown already
                                 ([0.2, -0.1, 0.1], [], 1)):  # leaning the other way
        calls = []

        def fake(model_, tok_, prior_, opts, rows, offset, calls=calls, first=first, second=second):
            calls.append((rows, offset))
            return list(first if len(calls) == 1 else second)

        monkeypatch.setattr(neighbours_check, "_log_ratios", fake)
        cal = check_neighbours(model, tok, smollm_prior, rows=3, extra_rows=5).calibration
        assert calls == [(3, NEIGHBOURS_OFFSET), (5, NEIGHBOURS_OFFSET + 3)][:looks]
        logs = first + second
        ci = mean_ci(logs).exp()
        assert cal.meta["neighbours_check"]["rows_used"] == len(logs)
        assert torch.allclose(cal.neighbours_check, torch.tensor([ci.mean, ci.high]))
    assert cal.use_neighbours is False and looks == 1


def test_glass_takes_the_nearest_replies_only_where_the_check_passed(smollm, smollm_prior):
    model, tok = smollm
    ids = tok("The history of the Roman Empire spans more than a thousand years,", return_tensors="pt")["input_ids"]

    def sets(prior, method):
        with apply_glass(model, GlassConfig(method=method, density=0.5, prior=prior)) as handle:
            model(input_ids=ids)
            return [s[0] for s in handle.selections]

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    def with_check(check):
        return replace(smollm_prior, calibration=replace(smollm_prior.calibration, neighbours_check=check))

    passed, failed = with_check(torch.tensor([0.9, 0.95])), with_check(torch.tensor([0.97, 1.02]))
    near, one = sets(passed, "glass-neighbours"), sets(passed, "glass-one-prior")
    assert not same(near, one)
    assert same(sets(passed, "glass"), near) and same(sets(failed, "glass"), one)
    assert same(sets(failed, "glass-neighbours"), near)  # the method of the check ignores it
    with pytest.warns(UserWarning, match="nearest-replies check"):  # a format-8 prior: the one prior, and why
        assert same(sets(with_check(None), "glass"), one)


def test_shared_replies_write_the_bank_and_covariance_replies_once_and_change_nothing(smollm, smollm_prior,
                                                                                     monkeypatch):
    """A build's bank and covariance steps read the same greedy replies: inside ``shared_replies`` they
    are written once, and both steps store exactly what they store when each writes its own; outside it
    nothing is kept."""
    from glass_llm import greedy_text
    from glass_llm.covariance import with_covariance

    model, tok = smollm
    alone = (with_bank(model, tok, smollm_prior, rows=6, greedy_len=16).calibration,
             with_covariance(model, tok, smollm_prior, rows=6, greedy_len=16).calibration)
    written = []
    real = greedy_text.sample_and_record
    monkeypatch.setattr(greedy_text, "sample_and_record", lambda *a, **k: written.append(1) or real(*a, **k))
    with greedy_text.shared_replies():
        shared = (with_bank(model, tok, smollm_prior, rows=6, greedy_len=16).calibration,
                  with_covariance(model, tok, smollm_prior, rows=6, greedy_len=16).calibration)
        with_bank(model, tok, smollm_prior, rows=5, greedy_len=16)  # another set of replies is written on its own
    assert len(written) == 2
    assert torch.equal(shared[0].bank_sums, alone[0].bank_sums)
    assert torch.equal(shared[0].bank_tokens, alone[0].bank_tokens)
    assert torch.equal(shared[1].lin_cov, alone[1].lin_cov) and torch.equal(shared[1].lin_mean, alone[1].lin_mean)
    assert greedy_text._SHARED is None
    with_bank(model, tok, smollm_prior, rows=6, greedy_len=16)
    assert len(written) == 3  # outside the block every call writes its replies
