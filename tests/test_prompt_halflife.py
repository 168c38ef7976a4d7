"""prompt_halflife: the prompt's last tokens weigh more in the local statistic.

A prompt token ``a`` tokens before the prompt's last one enters the statistic with weight
``0.5 ** (a / halflife)``, counted per row from its own last token, so left padding does not
move the weights; 0 is every token at weight 1, the paper's statistic.
"""

from __future__ import annotations

import pytest
import torch

from glass_llm import GlassConfig, apply_glass
from glass_llm.adapters import find_ffn_blocks
from glass_llm.calibrate import ActivationRecorder
from glass_llm.stats import activation_from_sums, recency_weights

TEXTS = ["The river flows north through the old town, past the mill and the church, and into the lake.",
         "Bees make honey."]


def _selections(model, ids, mask, halflife):
    with apply_glass(model, GlassConfig(method="griffin", density=0.5, prompt_halflife=halflife)) as h:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=True)
        return h.selections


def _expected(model, ids, mask, weights):
    """Per block, (B, k) top half of the neurons by the weighted statistic, sorted."""
    blocks = find_ffn_blocks(model)
    rec = ActivationRecorder(model, blocks)
    rec.per_row = True
    with rec:
        rec.run(model, ids, weights, attention_mask=mask)
    k = blocks[0].d_ff // 2
    return [torch.sort(torch.topk(activation_from_sums(s), k, dim=-1).indices, dim=-1).values
            for s in rec.take_row_sums()]


@pytest.mark.parametrize("halflife", [0, 3.0])
def test_prompt_tokens_weigh_by_their_distance_from_the_prompts_end(smollm, halflife):
    model, tok = smollm
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(TEXTS, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert mask[1].sum() < mask[0].sum()  # the second row is left-padded
    w = recency_weights(ids.shape[1], halflife)[0]
    got = _selections(model, ids, mask, halflife)
    want = _expected(model, ids, mask, mask * w)
    for g, e in zip(got, want):
        # griffin ranks the prompt alone: its sets are the top half by the weighted statistic
        assert torch.equal(g, e)
    # the padded row alone, unpadded: the same set (ages count from each row's last token)
    n = int(mask[1].sum())
    alone = _selections(model, ids[1:, -n:], mask[1:, -n:], halflife)
    assert all(torch.equal(a[0], g[1]) for a, g in zip(alone, got))


def test_prompt_halflife_changes_the_selection_of_a_long_prompt(smollm):
    model, tok = smollm
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    plain, recent = _selections(model, ids, mask, 0), _selections(model, ids, mask, 2.0)
    assert sum(not torch.equal(a, b) for a, b in zip(plain, recent)) > len(plain) // 2


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), "4", True])
def test_bad_prompt_halflife_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="prompt_halflife must be a finite number"):
        GlassConfig(method="glass", prompt_halflife=bad).resolved()
