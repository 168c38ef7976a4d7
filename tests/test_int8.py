"""Int8 weights: per-row quantization, int8 compact weights equal to the int8 masked path
on every layout and on real SmolLM2, scales that follow their rows, and an exact undo."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glass_llm import GlassConfig, apply_glass
from glass_llm.adapters import find_ffn_blocks
from glass_llm.quant import Int8Linear, int8_linear, quantize_rows
from glass_llm.teacher import continuation_logits

from tiny import ARCHS, tiny_model


def test_per_row_quantization_error_is_within_half_a_step():
    w = torch.randn(48, 40, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 48).unsqueeze(1)
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (48,) and int(q.abs().max()) <= 127
    assert bool(((w - q.float() * scale.unsqueeze(1)).abs() <= scale.unsqueeze(1) / 2 + 1e-7).all())
    assert bool((q.abs().amax(1) == 127).all())  # every row uses its full range
    x = torch.randn(3, 40)
    b = torch.randn(48)
    assert torch.allclose(int8_linear(x, q, scale, b), F.linear(x, q.float() * scale.unsqueeze(1), b), atol=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows(torch.randn(4))


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("batch", [1, 2])
def test_int8_sliced_equals_int8_masked_on_every_layout(kind, batch):
    model = tiny_model(kind)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, 96, (batch, 5), generator=g)
    cont = torch.randint(3, 96, (batch, 8), generator=g)
    base = dict(method="griffin", density=0.5, weights="int8")
    sliced, sel_s = continuation_logits(model, prompt, cont, GlassConfig(**base))
    masked, sel_m = continuation_logits(model, prompt, cont, GlassConfig(**base, path="masked"))
    assert all(torch.equal(a, b) for a, b in zip(sel_s, sel_m))
    assert (sliced - masked).abs().max() <= 1e-4
    float_sliced, _ = continuation_logits(model, prompt, cont, GlassConfig(method="griffin", density=0.5))
    assert (sliced - float_sliced).abs().max() > 0  # the int8 weights were used


def test_int8_compact_weights_keep_their_rows_scales(smollm):
    model, tok = smollm
    ids = tok("The river Thames flows through London", return_tensors="pt").input_ids
    with apply_glass(model, GlassConfig(method="griffin", density=0.5, weights="int8")) as handle:
        model.generate(ids, max_new_tokens=2, do_sample=False)
        block, state = handle.blocks[3], handle.states[3]
        gate, up = (w.original for w in handle._inputs[3])
        down = handle._outputs[3].original
        assert all(isinstance(m, Int8Linear) for m in (gate, up, down))
        sel = handle.selections[3][0]
        k = sel.numel()
        assert state.weight_in.dtype == torch.int8 and state.weight_out.dtype == torch.int8
        assert torch.equal(state.weight_in[:k], gate.weight[sel]) and torch.equal(state.weight_in[k:], up.weight[sel])
        assert torch.equal(state.scale_in[:k], gate.weight_scale[sel])
        assert torch.equal(state.scale_in[k:], up.weight_scale[sel])
        assert torch.equal(state.weight_out, down.weight[:, sel]) and state.scale_out is down.weight_scale
        assert block.d_ff == gate.out_features


@pytest.mark.parametrize("method", ["glass-schedule", "glass"])  # glass: the mean output read from int8 columns
def test_int8_on_real_smollm_sliced_equals_masked_and_undo_is_exact(smollm, smollm_prior, method):
    model, tok = smollm
    enc = tok("Photosynthesis lets plants turn light into sugar", return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(enc).logits
    originals = {name: m for name, m in model.named_modules()}
    cont = torch.tensor([[578, 314, 253, 1450, 282, 260, 3767, 30]])
    cfg = dict(method=method, density=0.5, prior=smollm_prior, weights="int8")
    sliced, _ = continuation_logits(model, enc, cont, GlassConfig(**cfg))
    masked, _ = continuation_logits(model, enc, cont, GlassConfig(**cfg, path="masked"))
    assert (sliced - masked).abs().max() <= 1e-4
    with torch.no_grad():
        assert torch.equal(model(enc).logits, before)
    assert all(originals[name] is m for name, m in model.named_modules())
    assert not any(isinstance(m, Int8Linear) for m in model.modules())


def test_int8_dense_quantizes_every_projection_and_bad_formats_are_named(smollm):
    model, tok = smollm
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with apply_glass(model, GlassConfig(method="dense", weights="int8")):
        assert sum(isinstance(m, Int8Linear) for m in model.modules()) == n_linear
        assert len(find_ffn_blocks(model)) == 30  # the quantized model is still recognised
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == n_linear
    with pytest.raises(ValueError, match="unknown weights format 'int4'"):
        apply_glass(model, GlassConfig(method="griffin", weights="int4"))
    model2 = tiny_model("llama")
    prompt = torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(0))
    with apply_glass(model2, GlassConfig(method="griffin", density=0.5, weights="int8")) as handle:
        for st in handle.states:
            st.batch_kernel = "bmm"
        with pytest.raises(ValueError, match="union"):
            model2.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2, do_sample=False,
                            pad_token_id=0)


@pytest.mark.parametrize("kind", ["llama", "phi3", "gpt2"])
def test_int8_refresh_rewrites_int8_slots_and_scales(kind):
    model = tiny_model(kind)
    g = torch.Generator().manual_seed(7)
    prompt, cont = torch.randint(3, 96, (1, 5), generator=g), torch.randint(3, 96, (1, 12), generator=g)
    base = dict(method="griffin", density=0.5, refresh=3, weights="int8")
    sliced, sel_s = continuation_logits(model, prompt, cont, GlassConfig(**base))
    masked, sel_m = continuation_logits(model, prompt, cont, GlassConfig(**base, path="masked"))
    assert all(torch.equal(a, b) for a, b in zip(sel_s, sel_m))
    assert (sliced - masked).abs().max() <= 1e-4
