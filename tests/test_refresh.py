"""Mask refresh: re-selecting the neuron sets every R generated tokens.

Generation and the teacher-forced evaluation must compute the same thing; R beyond the
generation is no refresh; the dense recomputation of the kept FFN inputs reproduces the
model's own intermediate activations on every supported layout.
"""

from __future__ import annotations

import pytest
import torch

from glass_llm import GlassConfig, GlassError, apply_glass, find_ffn_blocks
from glass_llm.adapters import ffn_intermediate
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
# refreshes, and growing ones 2, 4, 8 give two (before forwards 3 and 7).
@pytest.mark.parametrize("method,refresh,growth,expected", [("glass", 4, 1, 3), ("glass-a", 5, 1, 2),
                                                            ("griffin", 3, 1, 4), ("glass-refresh", 2, 2, 2)])
def test_teacher_forced_refresh_equals_stepwise_generation(smollm, smollm_prior, method, refresh, growth, expected):
    model, tok = smollm
    enc = _chat(tok, "Tell me about the history of Rome.")
    P = enc["input_ids"].shape[1]
    cfg = GlassConfig(method=method, density=0.5, prior=smollm_prior, refresh=refresh, refresh_growth=growth)
    with apply_glass(model, cfg) as h:
        out = model.generate(**enc, max_new_tokens=14, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert h.refreshes == expected
        assert h.refresh_s > 0
    step_logits = torch.stack(out.logits, 1)
    cont = out.sequences[:, P:]
    masked = GlassConfig(method=method, density=0.5, prior=smollm_prior, refresh=refresh, refresh_growth=growth,
                         path="masked")
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
