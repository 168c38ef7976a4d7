"""Dense start: the first W generated tokens run dense and join the prompt's statistic.

It must be exactly a longer prompt for the selection, exactly the dense model for those
tokens, and the same in generation and in the teacher-forced evaluation.
"""

from __future__ import annotations

import pytest
import torch

from glass_llm import GlassConfig, GlassError, apply_glass, equal_work_density
from glass_llm.teacher import continuation_logits

from tiny import tiny_model


def _chat(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)


@pytest.fixture(scope="module")
def rome(smollm):
    model, tok = smollm
    enc = _chat(tok, "Tell me about the history of Rome.")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    return enc["input_ids"], out[:, enc["input_ids"].shape[1]:]


@pytest.mark.parametrize("method", ["griffin", "glass", "glass-refresh"])
def test_selection_after_a_dense_start_is_the_selection_of_the_longer_prompt(smollm, smollm_prior, rome, method):
    """Selecting after W dense tokens chooses what a prompt ending with those W tokens would,
    adaptive lam included (it reads the token count)."""
    model, _ = smollm
    prompt, cont = rome
    W = 6
    cfg = GlassConfig(method=method, density=0.5, prior=smollm_prior, refresh=0)
    _, started = continuation_logits(model, prompt, cont, GlassConfig(method=method, density=0.5, prior=smollm_prior,
                                                                      refresh=0, dense_start=W))
    _, longer = continuation_logits(model, torch.cat([prompt, cont[:, :W]], 1), cont[:, W:], cfg)
    _, plain = continuation_logits(model, prompt, cont, cfg)
    assert all(torch.equal(a, b) for a, b in zip(started, longer))
    assert any(not torch.equal(a, b) for a, b in zip(started, plain))


def test_dense_start_tokens_are_the_dense_models(smollm, smollm_prior, rome):
    model, _ = smollm
    prompt, cont = rome
    W = 5
    dense, _ = continuation_logits(model, prompt, cont)
    started, _ = continuation_logits(model, prompt, cont, GlassConfig(method="glass", density=0.5, prior=smollm_prior,
                                                                      dense_start=W))
    assert (started[:, :W + 1] - dense[:, :W + 1]).abs().max() <= 1e-4  # the prefill's and the W dense forwards'
    assert (started[:, W + 1:] - dense[:, W + 1:]).abs().max() > 1e-2  # then sparse
    whole, sel = continuation_logits(model, prompt, cont, GlassConfig(method="glass", density=0.5, prior=smollm_prior,
                                                                      dense_start=cont.shape[1] + 3))
    assert sel is None  # the reply ended before any selection
    assert (whole - dense).abs().max() <= 1e-4


# 14 new tokens: the prefill gives the first, 3 dense forwards the next three, then the
# selection; with R = 4 two refreshes follow (before the forwards 8 and 12).
@pytest.mark.parametrize("method,refresh,expected", [("glass", 0, 0), ("glass-refresh", 4, 2), ("griffin", 4, 2)])
def test_teacher_forced_dense_start_equals_stepwise_generation(smollm, smollm_prior, method, refresh, expected):
    model, tok = smollm
    enc = _chat(tok, "Name three rivers and where they flow.")
    P = enc["input_ids"].shape[1]
    cfg = GlassConfig(method=method, density=0.5, prior=smollm_prior, refresh=refresh, dense_start=3)
    with apply_glass(model, cfg) as h:
        out = model.generate(**enc, max_new_tokens=14, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert h.refreshes == expected
        assert int(h.prompt_tokens[0]) == P + 3
    step_logits = torch.stack(out.logits, 1)
    cont = out.sequences[:, P:]
    from dataclasses import replace

    tf_logits, _ = continuation_logits(model, enc["input_ids"], cont, replace(cfg, path="masked"))
    assert (tf_logits - step_logits).abs().max() <= 1e-4
    plain, _ = continuation_logits(model, enc["input_ids"], cont, replace(cfg, dense_start=0))
    assert (plain - step_logits).abs().max() > 1e-3


def test_dense_start_on_a_padded_batch_counts_every_row(smollm, smollm_prior):
    """Left-padded rows of different lengths: each row's count grows by the W tokens."""
    model, tok = smollm
    texts = ["Hi.", "Write a long poem about the sea and the wind over the harbour."]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    with apply_glass(model, GlassConfig(method="glass-refresh", density=0.5, prior=smollm_prior,
                                        dense_start=4)) as h:
        model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        assert h.prompt_tokens.tolist() == [float(n + 4) for n in enc["attention_mask"].sum(1).tolist()]
        assert h.selections is not None


def test_a_forward_crossing_the_dense_start_is_a_clear_error():
    model = tiny_model("llama")
    ids = torch.randint(3, 96, (1, 5), generator=torch.Generator().manual_seed(0))
    cont = torch.randint(3, 96, (1, 6), generator=torch.Generator().manual_seed(1))
    from transformers import DynamicCache

    with apply_glass(model, GlassConfig(method="griffin", density=0.5, dense_start=3)):
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, cache=cache, use_cache=True)
        with pytest.raises(GlassError, match="crosses the end of the dense start"):
            model(input_ids=cont, cache=cache, use_cache=True)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_bad_dense_start_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="dense_start must be a whole number"):
        GlassConfig(method="griffin", dense_start=bad).resolved()


@pytest.mark.parametrize("density,W,G", [(0.5, 16, 256), (0.3, 8, 64), (0.9, 100, 1000)])
def test_equal_work_density_keeps_the_ffn_work_of_the_reply(density, W, G):
    d = equal_work_density(density, W, G)
    assert d < density
    assert W * 1.0 + (G - 1 - W) * d == pytest.approx(density * (G - 1))
    assert equal_work_density(density, 0, G) == pytest.approx(density)


def test_a_dense_start_beyond_the_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="alone does more FFN work than density 0.5"):
        equal_work_density(0.5, 40, 64)
