"""Compensation (the ``*-comp`` methods) on the real SmolLM2 model: the neurons a selection
leaves out are replaced by their mean output, on every path, without changing the
selection, and it brings the sparse model closer to the dense one on real text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glass_llm import GlassConfig, apply_glass
from glass_llm.adapters import find_ffn_blocks, weight_out_in
from glass_llm.compensation import running_mean
from glass_llm.engine import GlassError
from glass_llm.metrics import kl_per_token
from glass_llm.methods import get_method
from glass_llm.teacher import continuation_logits

from tiny import ARCHS, tiny_model, tiny_prior_with_mean

PROMPTS = ["The river Thames flows through London and",
           "Photosynthesis is the process by which green plants",
           "The French Revolution began in 1789 when",
           "In mathematics, a prime number is"]


def _expected(out_module, z, keep, mean):
    """What the block's output projection should compute: the kept neurons as they are,
    every other one at its mean activation."""
    w = weight_out_in(out_module).float()
    full = z.float() * keep + mean.float() * (1 - keep)
    return F.linear(full, w)


@pytest.mark.parametrize("path,batch", [("sliced", 1), ("sliced", 2), ("masked", 2)])
def test_left_out_neurons_are_replaced_by_their_mean(smollm, smollm_prior, path, batch):
    """One set for the batch (the mean output merged into the bias), one set per row (added
    per row) and the masked reference: each row's output is ``W (z * keep + m * (1 - keep))``;
    the sets are those of the same method without compensation (``glass-fixed-lam`` is
    ``glass-greedy`` with compensation; ``glass`` may fuse a short prompt at another lam)."""
    model, tok = smollm
    blocks = find_ffn_blocks(model)
    enc = tok(PROMPTS[:batch], return_tensors="pt", padding=True)
    mean = smollm_prior.calibration.greedy_mean
    with apply_glass(model, GlassConfig(method="glass-greedy", density=0.5, prior=smollm_prior)) as h:
        model.generate(**enc, max_new_tokens=2, do_sample=False)
        plain = h.selections
    with apply_glass(model, GlassConfig(method="glass-fixed-lam", density=0.5, prior=smollm_prior, path=path)) as h:
        model.generate(**enc, max_new_tokens=2, do_sample=False)
        assert all(torch.equal(a, b) for a, b in zip(plain, h.selections))
        z = torch.randn(batch, 3, blocks[0].d_ff, generator=torch.Generator().manual_seed(0))
        sparse = [i for i, b in enumerate(blocks) if h.selections[i].shape[-1] < b.d_ff]
        assert len(sparse) >= 3  # the per-layer schedule may keep every neuron of a block, not of most
        for i in (sparse[0], sparse[len(sparse) // 2], sparse[-1]):
            sets = h.selections[i]
            keep = torch.zeros(batch, blocks[i].d_ff).scatter_(1, sets.expand(batch, -1) if sets.shape[0] == 1
                                                                else sets, 1.0).unsqueeze(1)
            st = h.states[i]
            if path == "masked":  # the output projection sees every neuron
                got = h._outputs[i](z)
            else:  # it sees the compact activation: the set's neurons, or the union of the rows' sets
                got = h._outputs[i](z[..., sets[0] if st.row_mask is None else torch.unique(sets)])
            want = _expected(h._outputs[i].original, z, keep, mean[blocks[i].index])
            assert (got - want).abs().max() <= 1e-4
            plain_out = h._outputs[i].original(z * keep)
            assert (got - plain_out).abs().max() > 1e-3  # the mean output is really there


def test_compensated_teacher_forcing_equals_stepwise_decoding(smollm, smollm_prior):
    model, tok = smollm
    enc = tok.apply_chat_template([{"role": "user", "content": "What is a prime number?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    P = enc["input_ids"].shape[1]
    with apply_glass(model, GlassConfig(method="glass", density=0.5, prior=smollm_prior)):
        out = model.generate(**enc, max_new_tokens=10, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    step = torch.stack(out.logits, 1)
    tf, _ = continuation_logits(model, enc["input_ids"], out.sequences[:, P:],
                                GlassConfig(method="glass", density=0.5, prior=smollm_prior, path="masked"))
    assert (tf - step).abs().max() <= 1e-4


def test_compensation_brings_the_sparse_model_closer_to_dense(smollm, smollm_prior):
    """On real prompts and the dense model's own greedy continuations (32 tokens), adding
    back the mean output of the neurons left out lowers the mean KL to the dense model, with
    the paper's prior (``glass-schedule``) and with the default ``glass``'s prior of greedy text
    (``glass-fixed-lam``: ``glass-greedy`` plus compensation, nothing else changed)."""
    model, tok = smollm
    kls = {"glass-schedule": [], "glass-schedule-comp": [], "glass-greedy": [], "glass-fixed-lam": []}
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt")["input_ids"]
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                             min_new_tokens=32, do_sample=False)[:, ids.shape[1]:]
        dense, _ = continuation_logits(model, ids, ref, None)
        for m in kls:
            sparse, _ = continuation_logits(model, ids, ref, GlassConfig(method=m, density=0.5, prior=smollm_prior))
            kls[m].append(float(kl_per_token(dense[0, 1:], sparse[0, 1:]).mean()))
    assert sum(kls["glass-schedule-comp"]) < sum(kls["glass-schedule"])
    assert sum(kls["glass-fixed-lam"]) < sum(kls["glass-greedy"])


def test_compensated_methods_need_a_prior_with_its_mean():
    assert get_method("griffin-comp").needs_prior and not get_method("griffin").needs_prior
    assert get_method("glass").compensate and not get_method("glass-schedule").compensate
    with pytest.raises(GlassError, match="mean output of the neurons it leaves out"):
        apply_glass(tiny_model("llama"), GlassConfig(method="griffin-comp"))


@pytest.mark.parametrize("kind", ARCHS)
def test_compensation_on_every_layout_sliced_equals_masked(kind):
    """Every supported FFN layout (fused gate/up, Conv1D, biased projections): the sliced path
    with the mean output merged into the bias equals the masked path that adds it per row,
    for one set per row and one set for the batch, and it differs from no compensation."""
    model = tiny_model(kind)
    prior = tiny_prior_with_mean(model)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 96, (2, 7), generator=g)
    cont = torch.randint(3, 96, (2, 9), generator=g)
    for share in (False, True):
        cfg = dict(method="glass-a-comp", density=0.5, prior=prior, share_batch=share)
        sliced, sel_s = continuation_logits(model, prompt, cont, GlassConfig(**cfg))
        masked, sel_m = continuation_logits(model, prompt, cont, GlassConfig(**cfg, path="masked"))
        plain, sel_p = continuation_logits(model, prompt, cont, GlassConfig(**{**cfg, "method": "glass-a"}))
        assert (sliced - masked).abs().max() <= 1e-4
        assert all(torch.equal(a, b) for a, b in zip(sel_s, sel_p))
        assert (sliced[:, 1:] - plain[:, 1:]).abs().max() > 1e-4
        assert torch.equal(sliced[:, 0], plain[:, 0])  # the prefill is dense, nothing added


RUNNING = "glass-refresh-start-fade-comp-running"


def test_shrunk_mean_counts_the_prior_as_tokens():
    from glass_llm.stats import shrunk_mean

    signed, prior = torch.tensor([[6.0, -2.0], [0.0, 4.0]]), torch.tensor([1.0, 1.0])
    assert torch.allclose(shrunk_mean(signed, 2.0, prior, 2.0), torch.tensor([[2.0, 0.0], [0.5, 1.5]]))
    assert torch.equal(shrunk_mean(torch.zeros(1, 2), 0.0, prior, 16.0), prior.unsqueeze(0))
    with pytest.raises(ValueError, match="prior_count > 0"):
        shrunk_mean(signed, 2.0, prior, 0.0)


def test_running_compensation_mean_is_the_generated_tokens_mean_shrunk_toward_the_prior(smollm, smollm_prior):
    """With equal token weights and no dense start, after the first re-selection the mean each
    block adds back is ``(N * m + sum of the 4 generated tokens' activations) / (N + 4)``,
    the activations computed densely from the FFN inputs the sparse model saw."""
    from glass_llm.adapters import ffn_intermediate

    model, tok = smollm
    blocks = find_ffn_blocks(model)
    enc = tok(PROMPTS[0], return_tensors="pt")
    N, seen = 16.0, {}
    cfg = GlassConfig(method=RUNNING, density=0.5, prior=smollm_prior, refresh=4, refresh_halflife=0, dense_start=0)
    with apply_glass(model, cfg) as h:
        probes = [0, len(blocks) // 2, len(blocks) - 1]
        hooks = [h._inputs[i][0].register_forward_pre_hook(
            lambda mod, args, i=i: seen.setdefault(i, []).append(args[0]) if args[0].shape[1] == 1 else None)
            for i in probes]
        model.generate(**enc, max_new_tokens=6, do_sample=False)  # 5 decode forwards: one refresh, after 4
        for hook in hooks:
            hook.remove()
        assert h.refreshes == 1 and h.signed_tokens == 4.0
        for i in probes:
            x = torch.cat(seen[i][:4], dim=1)
            z = ffn_intermediate(blocks[i], x, [w.original for w in h._inputs[i]]).float()[0]
            want = (N * smollm_prior.calibration.greedy_mean[blocks[i].index].float() + z.sum(0)) / (N + 4)
            got = running_mean(h.comp_means[i], h.states[i].signed_sums, 1, h.signed_tokens, h.comp_tokens)
            assert (got[0] - want).abs().max() <= 1e-4


def test_running_compensation_teacher_forced_equals_stepwise_decoding(smollm, smollm_prior):
    """The running mean changes the logits; teacher forcing reproduces step-by-step decoding
    with it; a prior's mean worth ever so many tokens is the prior's mean alone."""
    from dataclasses import replace

    model, tok = smollm
    enc = tok.apply_chat_template([{"role": "user", "content": "Name three rivers and where they flow."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    P = enc["input_ids"].shape[1]
    cfg = GlassConfig(method=RUNNING, density=0.5, prior=smollm_prior, refresh=4, dense_start=3)
    with apply_glass(model, cfg) as h:
        out = model.generate(**enc, max_new_tokens=14, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert h.refreshes == 2 and h.signed_tokens > 3
    step = torch.stack(out.logits, 1)
    cont = out.sequences[:, P:]
    tf, _ = continuation_logits(model, enc["input_ids"], cont, replace(cfg, path="masked"))
    assert (tf - step).abs().max() <= 1e-4
    fixed, _ = continuation_logits(model, enc["input_ids"], cont, replace(cfg, comp_tokens=0))
    heavy, _ = continuation_logits(model, enc["input_ids"], cont, replace(cfg, comp_tokens=1e12))
    assert (fixed - step).abs().max() > 1e-3
    assert (heavy - fixed).abs().max() <= 1e-4
