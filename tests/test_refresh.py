"""Mask refresh: re-selecting the neuron sets every R generated tokens.

Generation and the teacher-forced evaluation must compute the same thing; R beyond the
generation is no refresh; the dense recomputation of the kept FFN inputs reproduces the
model's own intermediate activations on every supported layout.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from glass_llm import GlassConfig, GlassError, apply_glass, find_ffn_blocks
from glass_llm.adapters import ffn_intermediate
from glass_llm.stats import recency_weights
from glass_llm.teacher import continuation_logits

from tiny import ARCHS, tiny_model


def _chat(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)


@pytest.mark.parametrize("kind", ARCHS)
def test_ffn_intermediate_matches_the_models_own_activations(kind):
    model = tiny_model(kind)
    blocks = find_ffn_blocks(model)
    seen: dict[int, dict[str, torch.Tensor]] = {b.index: {} for b in blocks}
    hooks = []
    for b in blocks:
        hooks.append(b.input_modules[0].register_forward_hook(
            lambda m, a, o, i=b.index: seen[i].__setitem__("x", a[0])))
        hooks.append(b.output_module.register_forward_hook(
            lambda m, a, o, i=b.index: seen[i].__setitem__("z", a[0])))
    ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids)
        for h in hooks:
            h.remove()
        for b in blocks:
            z = ffn_intermediate(b, seen[b.index]["x"])
            assert z.shape == seen[b.index]["z"].shape
            assert (z - seen[b.index]["z"]).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("batch", [1, 2])  # one set (slots rewritten in place) / one set per row (regathered)
def test_refresh_sliced_equals_masked_and_changes_the_sets(kind, batch):
    model = tiny_model(kind)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, 96, (batch, 5), generator=g)
    cont = torch.randint(3, 96, (batch, 12), generator=g)
    cfg = GlassConfig(method="griffin", density=0.5, refresh=3)
    sliced, sel_s = continuation_logits(model, prompt, cont, cfg)
    masked, sel_m = continuation_logits(model, prompt, cont, GlassConfig(method="griffin", density=0.5,
                                                                           refresh=3, path="masked"))
    static, sel_0 = continuation_logits(model, prompt, cont, GlassConfig(method="griffin", density=0.5))
    assert (sliced - masked).abs().max() <= 1e-4
    assert all(torch.equal(a, b) for a, b in zip(sel_s, sel_m))
    assert any(not torch.equal(a, b) for a, b in zip(sel_s, sel_0))  # the final sets moved
    assert (sliced[:, :4] - static[:, :4]).abs().max() <= 1e-5  # before the first refresh: the same sets


# 14 new tokens: the prefill gives the first, 13 sparse forwards the rest; a refresh comes
# before the forward that follows each interval, so equal intervals of R give (14 - 2) // R
# refreshes, and growing ones 2, 4, 8 give two (before forwards 3 and 7). glass-neighbours meets the replies
# nearest to the prompt and the tokens so far again at each re-selection.
@pytest.mark.parametrize("method,refresh,growth,halflife,expected", [
    ("glass", 4, 1, 0, 3), ("glass-a", 5, 1, 0, 2), ("griffin", 3, 1, 0, 4), ("glass-refresh", 2, 2, None, 2),
    ("glass-refresh", 3, 1, 2.5, 4), ("glass-refresh", 3, 1, 0, 4), ("glass-neighbours", 4, 1, 0, 3)])
def test_teacher_forced_refresh_equals_stepwise_generation(smollm, smollm_prior, method, refresh, growth, halflife,
                                                           expected):
    model, tok = smollm
    enc = _chat(tok, "Tell me about the history of Rome.")
    P = enc["input_ids"].shape[1]
    cfg = GlassConfig(method=method, density=0.5, prior=smollm_prior, refresh=refresh, refresh_growth=growth,
                      refresh_halflife=halflife)
    with apply_glass(model, cfg) as h:
        out = model.generate(**enc, max_new_tokens=14, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert h.refreshes == expected
        assert h.refresh_s > 0
    step_logits = torch.stack(out.logits, 1)
    cont = out.sequences[:, P:]
    masked = GlassConfig(method=method, density=0.5, prior=smollm_prior, refresh=refresh, refresh_growth=growth,
                         refresh_halflife=halflife, path="masked")
    tf_logits, _ = continuation_logits(model, enc["input_ids"], cont, masked)
    assert (tf_logits - step_logits).abs().max() <= 1e-4
    static, _ = continuation_logits(model, enc["input_ids"], cont, GlassConfig(method=method, density=0.5,
                                                                               prior=smollm_prior))
    assert (static - step_logits).abs().max() > 1e-3  # refresh really changed the decode


def test_refresh_longer_than_the_generation_is_no_refresh(smollm, smollm_prior):
    model, tok = smollm
    enc = _chat(tok, "Name three rivers.")
    cont = torch.randint(100, 1000, (1, 10), generator=torch.Generator().manual_seed(0))
    base = GlassConfig(method="glass", density=0.5, prior=smollm_prior)
    off, sel_off = continuation_logits(model, enc["input_ids"], cont, base)
    long, sel_long = continuation_logits(model, enc["input_ids"], cont, GlassConfig(
        method="glass", density=0.5, prior=smollm_prior, refresh=50))
    assert torch.equal(off, long)
    assert all(torch.equal(a, b) for a, b in zip(sel_off, sel_long))


def test_static_methods_never_refresh():
    model = tiny_model("llama")
    handle = apply_glass(model, GlassConfig(method="magnitude", density=0.5, refresh=2))
    assert handle.refresh_every == 0
    handle.remove()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_bad_refresh_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="refresh must be a whole number"):
        GlassConfig(method="griffin", refresh=bad).resolved()


@pytest.mark.parametrize("bad", [0.5, 0, -2, float("nan"), float("inf"), True, "2"])
def test_bad_refresh_growth_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="refresh_growth must be a finite number >= 1"):
        GlassConfig(method="griffin", refresh=4, refresh_growth=bad).resolved()


def test_glass_refresh_weighs_recent_tokens_more_than_its_cumulative_ablation(smollm, smollm_prior):
    model, tok = smollm
    enc = _chat(tok, "Describe a walk through an old city at night.")
    with torch.no_grad():
        cont = model.generate(**enc, max_new_tokens=40, do_sample=False)[:, enc["input_ids"].shape[1]:]
    recent, sel_r = continuation_logits(model, enc["input_ids"], cont, GlassConfig(method="glass-refresh"), smollm_prior)
    cumul, sel_c = continuation_logits(model, enc["input_ids"], cont, GlassConfig(method="glass-refresh-cumulative"),
                                       smollm_prior)
    assert torch.equal(recent[:, :17], cumul[:, :17])  # the same sets until the first refresh (16 sparse tokens)
    assert any(not torch.equal(a, b) for a, b in zip(sel_r, sel_c))  # the refreshes weigh the tokens differently
    same, _ = continuation_logits(model, enc["input_ids"], cont, GlassConfig(method="glass-refresh",
                                                                             refresh_halflife=0), smollm_prior)
    assert torch.equal(same, cumul)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "8"])
def test_bad_refresh_halflife_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="refresh_halflife must be a finite number"):
        GlassConfig(method="griffin", refresh=4, refresh_halflife=bad).resolved()


def test_recency_weights():
    w, fade = recency_weights(5, 2.0)
    assert torch.allclose(w, torch.tensor([0.25, 0.5 ** 1.5, 0.5, 0.5 ** 0.5, 1.0]))
    assert fade == pytest.approx(0.5 ** 2.5)
    w, fade = recency_weights(3, 0)
    assert torch.equal(w, torch.ones(3)) and fade == 1.0
    # two steps compose: weights after the second equal one step over all tokens
    w1, _ = recency_weights(4, 3.0)
    w2, f2 = recency_weights(2, 3.0)
    both, _ = recency_weights(6, 3.0)
    assert torch.allclose(torch.cat([w1 * f2, w2]), both)


def _decode(model, prompt, steps, cache):
    out = model(input_ids=prompt, cache=cache, use_cache=True)
    for _ in range(steps):
        out = model(input_ids=out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)


@pytest.mark.parametrize("halflife", [0, 1.5])
def test_refresh_weighs_every_token_by_its_age(halflife):
    """After two re-selections every token counts 0.5 ** (age / halflife), its age counted in
    generated tokens at the last re-selection (every prompt token as old as the last one);
    the adaptive lam sees the weights' sum as the token count."""
    from transformers import DynamicCache

    model = tiny_model("llama")
    prompt = torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    cfg = GlassConfig(method="griffin", density=0.5, refresh=100, refresh_halflife=halflife)
    with apply_glass(model, cfg) as h, torch.no_grad():
        cache = DynamicCache(config=model.config)
        _decode(model, prompt, 3, cache)
        prompt_sums = [st.seen_sums.clone() for st in h.states]
        first = [torch.cat(st.inputs, 1) for st in h.states]
        h.refresh()
        out = model(input_ids=torch.full((2, 1), 7), cache=cache, use_cache=True)
        model(input_ids=out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
        second = [torch.cat(st.inputs, 1) for st in h.states]
        h.refresh()
        got = [st.seen_sums.clone() for st in h.states]
        tokens, prompt_tokens = h.seen_tokens.clone(), h.prompt_tokens.clone()
    n = first[0].shape[1] + second[0].shape[1]
    assert n == 5
    age = torch.arange(n - 1, -1, -1, dtype=torch.float64)
    w = torch.ones(n) if halflife == 0 else (0.5 ** (age / halflife)).float()
    w_prompt = 1.0 if halflife == 0 else 0.5 ** (n / halflife)
    for b, x1, x2, p, sums in zip(h.blocks, first, second, prompt_sums, got):
        with torch.no_grad():  # the original projections again: the handle is removed
            z = ffn_intermediate(b, torch.cat([x1, x2], 1))
        u2 = (z / z.norm(dim=-1, keepdim=True)).square()
        expected = p * w_prompt + (u2 * w.view(1, -1, 1)).sum(1)
        assert torch.allclose(sums, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(tokens, prompt_tokens * w_prompt + w.sum())


def test_growing_intervals():
    model = tiny_model("llama")
    with apply_glass(model, GlassConfig(method="griffin", density=0.5, refresh=3, refresh_growth=1.5)) as h:
        assert [h.refresh_interval(n) for n in range(5)] == [3, 4, 7, 10, 15]  # 3 * 1.5 ** n, rounded
    with apply_glass(model, GlassConfig(method="griffin", density=0.5, refresh=0, refresh_growth=2)) as h:
        assert h.refresh_interval(3) == 0


def test_a_forward_across_a_refresh_point_is_refused():
    model = tiny_model("llama")
    prompt = torch.randint(3, 96, (1, 4), generator=torch.Generator().manual_seed(0))
    from transformers import DynamicCache

    with apply_glass(model, GlassConfig(method="griffin", density=0.5, refresh=2)), torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, cache=cache, use_cache=True)
        with pytest.raises(GlassError, match="crosses a mask refresh"):
            model(input_ids=prompt[:, :3], cache=cache, use_cache=True)


def test_slots_rewritten_in_place_hold_the_chosen_neurons():
    from glass_llm.adapters import weight_out_in
    from glass_llm.sliced import compact_block, update_compact

    model = tiny_model("phi3")  # fused gate_up: two neuron blocks in one matrix
    with apply_glass(model, GlassConfig(method="griffin", density=0.5)) as h:
        st, ins, out = h.states[0], h._inputs[0], h._outputs[0]
        first = torch.arange(0, 64, 2).unsqueeze(0)
        compact_block(st, ins, out, first)
        buffers = (st.weight_in.data_ptr(), st.weight_out.data_ptr())
        second = torch.cat([torch.arange(0, 32, 2), torch.arange(33, 64, 2)]).unsqueeze(0)
        assert update_compact(st, ins, out, second)
        assert (st.weight_in.data_ptr(), st.weight_out.data_ptr()) == buffers  # same tensors, new values
        assert sorted(st.slots.tolist()) == second[0].tolist()
        w_in, w_out = weight_out_in(ins[0].original), weight_out_in(out.original)
        k = second.shape[1]
        assert torch.equal(st.weight_in[:k], w_in[st.slots]) and torch.equal(st.weight_in[k:], w_in[st.slots + 64])
        assert torch.equal(st.weight_out, w_out[:, st.slots])


def _scheduled(prior):
    """``prior`` whose schedule check measured the per-layer schedule better at every density."""
    cal = prior.calibration
    return replace(prior, calibration=replace(cal, check_densities=torch.tensor([0.3, 0.5, 0.7, 0.9]),
                                              check_ratio=torch.full((4,), 0.9), check_upper=torch.full((4,), 0.95)))


def test_schedule_fade_moves_the_per_layer_counts_toward_one_density(smollm, smollm_prior):
    model, tok = smollm
    smollm_prior = _scheduled(smollm_prior)
    enc = _chat(tok, "Describe a walk through an old city at night.")
    P = enc["input_ids"].shape[1]
    cfg = GlassConfig(method="glass-refresh-fade", density=0.5, prior=smollm_prior, schedule_halflife=12)
    with apply_glass(model, cfg) as h:
        sched, even = h.selector.k, h.selector.k_even
        assert even is not None and sched != even
        out = model.generate(**enc, max_new_tokens=40, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert h.refreshes == 2  # 39 sparse forwards: re-selections after 16 and 32 generated tokens
        counts = [s.shape[-1] for s in h.selections]
    w = 2 ** (-32 / 12)  # the schedule's weight at the last re-selection, 0.157
    assert counts == h.selector.counts(w)
    assert sum(counts) == round(w * sum(sched) + (1 - w) * sum(even))  # the budget, between the two
    assert all(min(a, b) <= c <= max(a, b) for a, b, c in zip(sched, even, counts))
    dist_sched = sum(abs(c - a) for c, a in zip(counts, sched))
    assert dist_sched > 3 * sum(abs(c - b) for c, b in zip(counts, even))  # much nearer one density for all
    step_logits = torch.stack(out.logits, 1)
    cont = out.sequences[:, P:]
    masked = GlassConfig(method="glass-refresh-fade", density=0.5, prior=smollm_prior, schedule_halflife=12,
                         path="masked")
    tf_logits, tf_sel = continuation_logits(model, enc["input_ids"], cont, masked)
    assert (tf_logits - step_logits).abs().max() <= 1e-4
    assert [s.shape[-1] for s in tf_sel] == counts
    # no fade: glass-refresh exactly; the fade changes nothing before the first re-selection
    off, _ = continuation_logits(model, enc["input_ids"], cont, GlassConfig(
        method="glass-refresh-fade", schedule_halflife=0), smollm_prior)
    plain, _ = continuation_logits(model, enc["input_ids"], cont, GlassConfig(method="glass-refresh"), smollm_prior)
    faded, _ = continuation_logits(model, enc["input_ids"], cont, GlassConfig(method="glass-refresh-fade",
                                                                              schedule_halflife=12), smollm_prior)
    assert torch.equal(off, plain)
    assert torch.equal(faded[:, :17], plain[:, :17])
    assert (faded - plain).abs().max() > 1e-3


def test_schedule_fade_without_a_schedule_keeps_the_counts():
    model = tiny_model("llama")
    with apply_glass(model, GlassConfig(method="griffin", density=0.5, refresh=2, schedule_halflife=4)) as h:
        assert h.selector.k_even is None and h.selector.counts(0.0) == h.selector.k


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "8"])
def test_bad_schedule_halflife_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="schedule_halflife must be a finite number"):
        GlassConfig(method="glass-refresh", schedule_halflife=bad).resolved()
