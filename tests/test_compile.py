"""Compiled decoding (transformers' static cache + torch.compile) with GLASS applied.

The step is traced with ``fullgraph=True`` and dynamo's ``eager`` backend: the graph
capture is the part GLASS can break (a graph break or a guard on per-request state
fails here), while inductor's code generation is GLASS-agnostic and takes minutes on a
small CPU (its speed is measured by ``glass bench --compile``).
"""

from __future__ import annotations

import pytest
import torch

from glass_llm import GlassConfig, apply_glass
from glass_llm.decode import compile_kwargs, compiled_frames, reset_compiled


@pytest.fixture()
def fresh(smollm):
    model, tok = smollm
    reset_compiled(model)
    yield model, tok
    reset_compiled(model)


@pytest.mark.parametrize("weights", ["float", "int8"])
def test_compiled_equals_eager_and_compiles_once(fresh, smollm_prior, weights):
    model, tok = fresh
    prompts = [tok("The harbour town woke slowly that morning.", return_tensors="pt"),
               tok("Fishermen carried their nets down to the water while gulls circled above the market",
                   return_tensors="pt")]
    assert prompts[0]["input_ids"].shape[1] != prompts[1]["input_ids"].shape[1]
    kw = compile_kwargs(model, backend="eager", max_cache_len=64)
    with apply_glass(model, GlassConfig(method="glass", density=0.5, prior=smollm_prior, weights=weights)):
        eager = [model.generate(**p, max_new_tokens=8, do_sample=False) for p in prompts]
        first = model.generate(**prompts[0], max_new_tokens=8, do_sample=False, **kw)
        frames = compiled_frames()
        second = model.generate(**prompts[1], max_new_tokens=8, do_sample=False, **kw)
        assert compiled_frames() == frames  # another prompt length: nothing compiled again
    assert frames >= 1
    assert torch.equal(first, eager[0]) and torch.equal(second, eager[1])


def test_compile_kwargs_reject_bad_settings(smollm):
    model, _ = smollm
    with pytest.raises(ValueError, match="compile mode"):
        compile_kwargs(model, mode="fastest")
    with pytest.raises(ValueError, match="max_cache_len"):
        compile_kwargs(model, max_cache_len=1)
