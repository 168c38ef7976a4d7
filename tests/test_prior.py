"""Global priors: self-sampled on the real model, saved atomically, refused when wrong."""

from __future__ import annotations

import os

import pytest
import torch

from glass_llm import PriorError, load_prior, save_prior
from glass_llm.build import build_prior
from glass_llm.prior import model_identity


def test_self_prior_is_complete_and_round_trips(smollm, smollm_prior, tmp_path):
    model, _ = smollm
    p = smollm_prior
    assert p.sums.shape == (30, 1536) and p.n_tokens >= 2048
    assert torch.isfinite(p.sums).all() and (p.sums >= 0).all()
    # every token contributes a unit vector: each layer's sums add up to the token count
    assert torch.allclose(p.sums.sum(1), torch.full((30,), float(p.n_tokens)), rtol=1e-3)
    assert p.meta["source"]["kind"] == "self" and p.meta["model"] == model_identity(model)
    path = save_prior(p, tmp_path / "p.safetensors")
    q = load_prior(path)
    assert torch.equal(q.sums, p.sums) and q.meta == p.meta
    assert torch.allclose(q.scores_for("impact"), p.scores_for("activation") * p.down_norms)
    q.check_matches(model)
    assert [f.name for f in tmp_path.iterdir()] == ["p.safetensors"]  # no temporary left behind


def test_corpus_prior_from_a_text_file(smollm, tmp_path):
    model, tok = smollm
    text = tmp_path / "doc.txt"
    text.write_text("The cat sat on the mat and looked out of the window at the rain.\n\n"
                    "Mountains rise above the valley where a river runs towards the distant sea.")
    p = build_prior(model, tok, source=str(text), n_tokens=64, seq_len=32, progress=False)
    assert p.meta["source"]["kind"] == "text" and 16 <= p.n_tokens <= 64
    with pytest.raises(ValueError, match="unknown text source"):
        build_prior(model, tok, source=str(tmp_path / "missing.txt"), n_tokens=64, progress=False)


def test_prior_for_another_model_is_refused(smollm_prior):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=30, num_attention_heads=4,
                         intermediate_size=1536)
    other = tf.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(PriorError, match="built for another model"):
        smollm_prior.check_matches(other)
    from glass_llm import GlassConfig, apply_glass

    with pytest.raises(PriorError, match="another model"):
        apply_glass(other, GlassConfig(method="glass", prior=smollm_prior))


def test_corrupt_truncated_and_foreign_files(smollm_prior, tmp_path):
    good = save_prior(smollm_prior, tmp_path / "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a prior at all")
    for name in ("half", "junk"):
        with pytest.raises(PriorError, match="corrupt or incomplete"):
            load_prior(tmp_path / f"{name}.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(PriorError, match="not a glass-llm prior"):
        load_prior(tmp_path / "foreign.safetensors")
    with pytest.raises(PriorError, match="does not exist"):
        load_prior(tmp_path / "nope.safetensors")


def test_atomic_write_keeps_old_file_on_failure(smollm_prior, tmp_path, monkeypatch):
    path = save_prior(smollm_prior, tmp_path / "p.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_prior(smollm_prior, path)
    assert path.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.safetensors"]
