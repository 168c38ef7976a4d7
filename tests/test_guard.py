"""Loop guard: dense decode steps after a repeated 4-gram, the same in generation and in
teacher-forced evaluation."""

from __future__ import annotations

import pytest
import torch

from glass_llm import GlassConfig, GlassError, apply_glass
from glass_llm.guard import LoopGuard, guard_modes, stop_ids_of
from glass_llm.teacher import continuation_logits

from tiny import tiny_model


def test_a_repeated_4gram_turns_on_dense_steps():
    seq = torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3, 4, 6, 7, 8, 9, 10]])
    # the 4-gram (1, 2, 3, 4) comes back with the token at position 8: that step and the next two are dense
    assert [i for i, d in enumerate(guard_modes(seq, 3)) if d] == [8, 9, 10]
    # a second repeat while dense restarts the count
    seq = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 9, 9]])
    assert [i for i, d in enumerate(guard_modes(seq, 2)) if d] == [7, 8, 9, 10, 11]
    # rows are tracked apart, and a position is dense when any row asks for it
    two = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4, 5], [5, 6, 7, 8, 9, 10, 11, 12, 5]])
    assert [i for i, d in enumerate(guard_modes(two, 1)) if d] == [7]
    # a finished row (end-of-sequence or padding id) does not count
    done = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert any(guard_modes(done, 2)) and not any(guard_modes(done, 2, stop_ids=frozenset({0})))


def test_guard_counts_its_dense_steps_and_refuses_bad_input():
    g = LoopGuard(1, 2)
    g.feed(torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4, 9, 9]]))
    assert (g.triggers, g.dense_steps, g.steps_seen) == (1, 2, 10)
    with pytest.raises(GlassError, match="crosses a loop-guard switch"):
        LoopGuard(1, 2).step(torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4, 9]]))
    with pytest.raises(GlassError, match="token ids"):
        LoopGuard(1, 2).step(torch.zeros(1, 1, 8))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="loop_guard"):
            GlassConfig(loop_guard=bad).resolved()
    with pytest.raises(ValueError, match="loop_guard"):
        LoopGuard(1, 0)


def test_stop_ids_come_from_the_generation_config(smollm):
    model, tok = smollm
    assert tok.eos_token_id in stop_ids_of(model)


@pytest.mark.parametrize("method,refresh", [("glass-a", 0), ("glass-a", 4)])
def test_teacher_forced_guard_equals_stepwise_generation(smollm, smollm_prior, method, refresh):
    """A prompt whose continuation soon repeats itself by copying (whichever build of the prior
    selects): the guard runs dense steps, and teacher-forced evaluation of the reply reproduces
    generation's logits."""
    model, tok = smollm
    enc = tok("red blue green, " * 4, return_tensors="pt")
    P = enc["input_ids"].shape[1]
    n = 40
    cfg = GlassConfig(method=method, density=0.5, prior=smollm_prior, loop_guard=3, refresh=refresh or None,
                      dense_start=0)
    with apply_glass(model, cfg) as h:
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        dense_steps, steps = h.guard.dense_steps, h.guard.steps_seen
    assert steps == n - 1 and 0 < dense_steps < steps
    cont = out.sequences[:, P:]
    modes = guard_modes(cont[:, :-1], 3, stop_ids_of(model))
    assert sum(modes) == dense_steps
    step_logits = torch.stack(out.logits, 1)
    tf, _ = continuation_logits(model, enc["input_ids"], cont, cfg)
    assert (tf - step_logits).abs().max() <= 1e-4
    off, _ = continuation_logits(model, enc["input_ids"], cont, GlassConfig(
        method=method, density=0.5, prior=smollm_prior, refresh=refresh or None, dense_start=0))
    first = modes.index(True)  # the guard changes nothing before its first dense step, and that step's logits
    assert (off[:, :first + 1] - tf[:, :first + 1]).abs().max() <= 1e-4
    assert (off[:, first + 1] - tf[:, first + 1]).abs().max() > 1e-3


def test_guard_on_embeddings_is_refused():
    model = tiny_model("llama")
    prompt = torch.randint(3, 96, (1, 4), generator=torch.Generator().manual_seed(0))
    from transformers import DynamicCache

    with apply_glass(model, GlassConfig(method="griffin", density=0.5, loop_guard=2)), torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=prompt, cache=cache, use_cache=True)
        embeds = model.get_input_embeddings()(prompt[:, :1])
        with pytest.raises(GlassError, match="token ids"):
            model(inputs_embeds=embeds, cache=cache, use_cache=True)
