"""Method variants by name (``BASE:option=value``): parsing, refusals, and that a variant decodes
and scores exactly as its base method with the same options given to ``GlassConfig``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from glass_llm import GlassConfig, apply_glass
from glass_llm.evaluate import EvalSettings, run_eval
from glass_llm.methods import get_method, register_method

DOCS = [f"A note on {t}. " + " ".join(f"Sentence {j} tells of {t} in plain words, with a detail to remember."
                                     for j in range(5)) for t in ("the harbour", "a violin maker", "winter markets")]


def test_a_variant_is_its_base_with_the_options_changed_and_a_canonical_name():
    base = get_method("glass-refresh-linear")
    v = get_method(" glass-refresh-linear : linear-blocks = 4 : refresh-growth=2.0")
    assert v == replace(base, name="glass-refresh-linear:refresh-growth=2:linear-blocks=4", refresh_growth=2.0,
                        linear_blocks=4)
    assert get_method(v.name) == v  # the canonical name reads back as itself
    assert get_method("glass-refresh:refresh=0").refresh == 0  # turning refresh off acts on a refresh method
    assert get_method("glass") is get_method("glass")  # plain names are the registered specs themselves


@pytest.mark.parametrize("name,error", [
    ("glass:foo=1", "unknown method option 'foo'"),
    ("glass:refresh", "needs a value: refresh=VALUE"),
    ("glass:refresh=", "needs a value"),
    ("glass:refresh=1.5", "takes a whole number, got '1.5'"),
    ("glass-refresh:refresh-growth=x", "takes a number, got 'x'"),
    ("glass:refresh=-1", "refresh must be a whole number"),
    ("glass-refresh:refresh-growth=0.5", "refresh-growth must be a finite number >= 1"),
    ("glass-refresh:refresh-halflife=nan", "refresh-halflife must be a finite number"),
    ("glass-linear:linear-blocks=2:linear-blocks=3", "given twice"),
    ("nope:refresh=2", "unknown method 'nope'"),
    ("dense:refresh=4", "'dense' does not"),
    ("glass:refresh-growth=2", "re-selects during decoding, and 'glass' does not"),
    ("glass-refresh:refresh=0:refresh-growth=2", "re-selects during decoding"),
    ("glass:schedule-halflife=4", "per-layer density"),
    ("glass-a:comp-tokens=4", "adds back the mean"),
    ("glass-a:linear-blocks=3", "predicts the neurons it leaves out, and 'glass-a' does not"),
])
def test_bad_variants_are_refused_with_the_reason(name, error):
    with pytest.raises(ValueError, match=error):
        get_method(name)


def test_a_registered_name_cannot_hold_the_variant_separator():
    with pytest.raises(ValueError, match="':' starts a variant"):
        register_method(replace(get_method("glass"), name="glass:mine"))


def test_a_variant_decodes_as_its_base_with_the_same_options(smollm, smollm_prior):
    """``glass-refresh:refresh=3:dense-start=2`` is ``glass-refresh`` with ``refresh=3, dense_start=2``:
    the same re-selections and the same logits, and different from ``glass-refresh`` as registered."""
    model, tok = smollm
    enc = tok(["The history of the printing press begins"], return_tensors="pt")
    logits, counts = {}, {}
    for key, config in (("variant", GlassConfig(method="glass-refresh:refresh=3:dense-start=2", prior=smollm_prior)),
                        ("options", GlassConfig(method="glass-refresh", refresh=3, dense_start=2, prior=smollm_prior)),
                        ("base", GlassConfig(method="glass-refresh", prior=smollm_prior))):
        with apply_glass(model, config) as h:
            out = model.generate(**enc, max_new_tokens=10, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
            logits[key], counts[key] = torch.stack(out.logits, 1), h.refreshes
    assert counts["variant"] == counts["options"] == 2 and counts["base"] == 0
    assert torch.equal(logits["variant"], logits["options"])
    assert (logits["variant"] - logits["base"]).abs().max() > 1e-2


def test_glass_eval_scores_variants_side_by_side(smollm, smollm_prior, tmp_path):
    """One run scores a method and its variants; an option that changes decoding changes the
    records, and a variant naming the base's own setting scores exactly as the base."""
    model, tok = smollm
    methods = ("dense", "glass-refresh", "glass-refresh:refresh=16", "glass-refresh:refresh=2")
    settings = EvalSettings(model="smollm2-135m", corpus="test-docs", methods=methods, densities=(0.5,),
                            prompt_tokens=(6,), gen_tokens=8, n_prompts=2, batch_size=2, lams=(0.5,))
    run = run_eval(model, tok, settings, prior=smollm_prior, out_dir=tmp_path, docs=DOCS, progress=False,
                   plots=False)
    kl = {m: [r["kl"] for r in run.records if r["method"] == m] for m in methods}
    assert all(len(v) == 2 for v in kl.values())
    assert kl["glass-refresh:refresh=16"] == kl["glass-refresh"]  # 16 is glass-refresh's own interval
    assert kl["glass-refresh:refresh=2"] != kl["glass-refresh"]
    with pytest.raises(ValueError, match="listed twice"):
        replace(settings, methods=("glass-refresh:refresh=4:dense-start=1",
                                   "glass-refresh:dense-start=1:refresh=4")).validate()
