"""The engine: sliced == masked, undo is exact, generation modes, batches, bad input.

Architectures without weights on this machine (Qwen2, Qwen3, Mistral, Phi-3, GPT-2,
OPT, Gemma3, tiny Llama) are built small and randomly initialised from their configs;
SmolLM2-135M-Instruct (real weights) covers Llama end to end.
"""

from __future__ import annotations

import pytest
import torch

from glass_llm import GlassConfig, GlassError, UnsupportedModelError, apply_glass, find_ffn_blocks
from glass_llm.teacher import continuation_logits

from tiny import ARCHS, tiny_model as _tiny


@pytest.mark.parametrize("kind", ARCHS)
def test_ffn_blocks_found(kind):
    model = _tiny(kind)
    blocks = find_ffn_blocks(model)
    assert len(blocks) == 2
    assert all(b.d_ff == 64 for b in blocks)


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("method", ["griffin", "magnitude", "random"])
def test_sliced_equals_masked(kind, method):
    model = _tiny(kind)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 96, (2, 7), generator=g)
    cont = torch.randint(3, 96, (2, 9), generator=g)
    cfg = GlassConfig(method=method, density=0.5)
    sliced, sel_s = continuation_logits(model, prompt, cont, cfg)
    masked, sel_m = continuation_logits(model, prompt, cont, GlassConfig(method=method, density=0.5, path="masked"))
    dense, _ = continuation_logits(model, prompt, cont)
    assert (sliced - masked).abs().max() <= 1e-4
    assert all(torch.equal(a, b) for a, b in zip(sel_s, sel_m))
    assert (sliced[:, 1:] - dense[:, 1:]).abs().max() > 1e-3  # sparsity really changed something
    assert torch.equal(sliced[:, 0], dense[:, 0])  # the prefill is dense


@pytest.mark.parametrize("kind", ARCHS)
def test_density_one_and_undo_are_exact(kind):
    model = _tiny(kind)
    ids = torch.randint(3, 96, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids).logits
        state = {k: v.clone() for k, v in model.state_dict().items()}
        full, _ = continuation_logits(model, ids[:, :5], ids[:, 5:], GlassConfig(method="griffin", density=1.0))
        ref, _ = continuation_logits(model, ids[:, :5], ids[:, 5:])
        assert torch.equal(full, ref)
        handle = apply_glass(model, GlassConfig(method="griffin", density=0.25))
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        handle.remove()
        after = model(ids).logits
    assert torch.equal(before, after)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_unsupported_model_is_named():
    class NoFFN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Linear(4, 4)

    with pytest.raises(UnsupportedModelError, match="no feed-forward block found in NoFFN"):
        apply_glass(NoFFN(), GlassConfig(method="griffin"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(density=0.0), "density"), (dict(density=1.5), "density"), (dict(lam=1.2), "lam"),
    (dict(method="nope"), "unknown method"), (dict(method="griffin", lam=0.3), "fixes lam"),
    (dict(path="fast"), "unknown path"), (dict(statistic="mean"), "unknown statistic"),
])
def test_bad_config(kwargs, match):
    model = _tiny("llama")
    with pytest.raises(ValueError, match=match):
        apply_glass(model, GlassConfig(**kwargs))


def test_per_layer_density_and_double_apply():
    model = _tiny("llama")
    with pytest.raises(ValueError, match="per-layer density has 3 values"):
        apply_glass(model, GlassConfig(method="griffin", density=(0.5, 0.5, 0.5)))
    with apply_glass(model, GlassConfig(method="griffin", density=(0.25, 0.75))) as h:
        assert h.k == [16, 48]
        with pytest.raises(GlassError, match="already applied"):
            apply_glass(model, GlassConfig(method="griffin"))
        model.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=2, pad_token_id=0)
        assert [s.shape[-1] for s in h.selections] == [16, 48]


def test_glass_without_prior_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a global prior"):
        apply_glass(_tiny("llama"), GlassConfig(method="glass"))


def test_empty_prompt_is_rejected(smollm):
    model, tok = smollm
    with apply_glass(model, GlassConfig(method="griffin")):
        with pytest.raises(ValueError, match="empty prompt"):
            model(input_ids=torch.zeros(1, 0, dtype=torch.long))
        with pytest.raises(ValueError, match="empty prompt in batch row"):
            model(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))


# --- the real SmolLM2 model ------------------------------------------------------------


def _chat(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)


def test_lam_one_is_griffin_topk_and_lam_zero_is_static(smollm, smollm_prior):
    from glass_llm.calibrate import ActivationRecorder
    from glass_llm.ranking import keep_count
    from glass_llm.stats import activation_from_sums

    model, tok = smollm
    enc = tok("The tallest mountain in Europe is", return_tensors="pt")
    with ActivationRecorder(model) as rec:
        rec.run(model, enc["input_ids"])
    k = keep_count(0.5, 1536)
    expected = [torch.topk(activation_from_sums(s), k).indices.sort().values for s in rec.sums]
    with apply_glass(model, GlassConfig(method="glass-a", lam=1.0, density=0.5, prior=smollm_prior)) as h:
        model.generate(**enc, max_new_tokens=2, do_sample=False)
        got = [s[0] for s in h.selections]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    sets = []
    for text in ["Hello there", "A completely different prompt about chemistry and atoms."]:
        with apply_glass(model, GlassConfig(method="glass-a", lam=0.0, density=0.5, prior=smollm_prior)) as h:
            model.generate(**tok(text, return_tensors="pt"), max_new_tokens=2, do_sample=False)
            sets.append(h.selections)
    assert all(torch.equal(a, b) for a, b in zip(*sets))


def test_batch_rows_match_single_prompts(smollm, smollm_prior):
    model, tok = smollm
    prompts = ["Hi", "Name three colours of the rainbow.", "Write one sentence about the sea and the wind."]
    cfg = GlassConfig(method="glass", density=0.5, prior=smollm_prior)
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert tok.padding_side == "left" and (enc["attention_mask"] == 0).any()
    with apply_glass(model, cfg) as h:
        out = model.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
        batch_sets = h.selections
    batch_logits = torch.stack(out.logits, 1)
    for i, p in enumerate(prompts):
        single = tok(p, return_tensors="pt")
        with apply_glass(model, cfg) as h:
            o = model.generate(**single, max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
            assert all(torch.equal(b[i], s[0]) for b, s in zip(batch_sets, h.selections))
        assert (torch.stack(o.logits, 1)[0] - batch_logits[i]).abs().max() <= 1e-4


def test_teacher_forced_masked_equals_stepwise_sparse_decoding(smollm, smollm_prior):
    model, tok = smollm
    enc = _chat(tok, "What is a prime number?")
    P = enc["input_ids"].shape[1]
    cfg = GlassConfig(method="glass", density=0.5, prior=smollm_prior)
    with apply_glass(model, cfg):
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    step_logits = torch.stack(out.logits, 1)
    cont = out.sequences[:, P:]
    tf_logits, _ = continuation_logits(model, enc["input_ids"], cont,
                                       GlassConfig(method="glass", density=0.5, prior=smollm_prior, path="masked"))
    assert (tf_logits - step_logits).abs().max() <= 1e-4


def test_generation_modes_and_new_selection_per_call(smollm, smollm_prior):
    from transformers import TextIteratorStreamer

    model, tok = smollm
    enc = _chat(tok, "Say something about cats.")
    with apply_glass(model, GlassConfig(method="glass", density=0.5, prior=smollm_prior)) as h:
        greedy = model.generate(**enc, max_new_tokens=5, do_sample=False)
        first = h.selections
        torch.manual_seed(0)
        sampled = model.generate(**enc, max_new_tokens=5, do_sample=True, temperature=0.8, num_return_sequences=2)
        beams = model.generate(**enc, max_new_tokens=5, num_beams=3, do_sample=False)
        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        model.generate(**enc, max_new_tokens=5, do_sample=False, streamer=streamer)
        streamed = "".join(streamer)
        other = model.generate(**_chat(tok, "Explain the rules of chess in detail."), max_new_tokens=3)
        assert h.selections[0].shape[0] == 1 and not torch.equal(first[5], h.selections[5])
    assert greedy.shape[1] == enc["input_ids"].shape[1] + 5
    assert sampled.shape[0] == 2 and beams.shape[0] == 1 and streamed.strip() and other.shape[0] == 1


@pytest.mark.slow
def test_gemma3_real_weights_sliced_equals_masked():
    from glass_llm import load_model

    model, tok = load_model("gemma3-270m")
    enc = tok("The river Thames flows through", return_tensors="pt")
    cont = model.generate(**enc, max_new_tokens=8, do_sample=False)[:, enc["input_ids"].shape[1]:]
    a, _ = continuation_logits(model, enc["input_ids"], cont, GlassConfig(method="griffin", density=0.5))
    b, _ = continuation_logits(model, enc["input_ids"], cont, GlassConfig(method="griffin", density=0.5, path="masked"))
    assert (a - b).abs().max() <= 1e-4
