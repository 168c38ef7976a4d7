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
    # the calibration's metadata is the calibration's, whether the prior was just built or loaded
    assert "calibration" not in q.meta and q.calibration.meta == p.calibration.meta
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


# --- the default prior: one per model, shared by every command ---------------------------------


def test_every_command_resolves_the_same_default_prior(tmp_path):
    import inspect

    from glass_llm.build import get_or_build_prior
    from glass_llm.cli import build_parser
    from glass_llm.lmeval import GlassLM
    from glass_llm.prior_cache import DEFAULT_PRIOR_SOURCE, DEFAULT_PRIOR_TOKENS, default_prior_path

    parser = build_parser()
    expected = default_prior_path("smollm2-135m")
    assert expected == default_prior_path("smollm2-135m", DEFAULT_PRIOR_SOURCE, DEFAULT_PRIOR_TOKENS)
    for argv in (["demo"], ["generate", "smollm2-135m", "hi"], ["bench"], ["serve"],
                 ["eval", "--out", str(tmp_path)]):
        args = parser.parse_args(argv)
        source = getattr(args, "prior_source", DEFAULT_PRIOR_SOURCE)
        assert default_prior_path(args.model, source, args.prior_tokens) == expected, argv
    args = parser.parse_args(["prior"])
    assert default_prior_path(args.model, args.source, args.tokens) == expected
    # the library and the harness model default to it too (None means the default)
    assert inspect.signature(get_or_build_prior).parameters["n_tokens"].default is None
    assert inspect.signature(GlassLM.__init__).parameters["prior_tokens"].default is None


def test_a_cached_larger_prior_is_used_and_a_named_missing_one_is_an_error(smollm, smollm_prior, tmp_path,
                                                                           monkeypatch):
    from glass_llm.build import get_or_build_prior
    from glass_llm.prior_cache import default_prior_path, find_cached_prior, list_cached_priors

    monkeypatch.setenv("GLASS_LLM_CACHE", str(tmp_path))
    model, tok = smollm
    assert find_cached_prior("smollm2-135m", "self", 8192) is None
    big = save_prior(smollm_prior, default_prior_path("smollm2-135m", "self", 16384))
    save_prior(smollm_prior, default_prior_path("smollm2-135m", "self", 4096))
    assert find_cached_prior("smollm2-135m", "self", 8192) == big
    assert find_cached_prior("smollm2-135m", "self", 2048) == big  # the largest that is large enough
    assert find_cached_prior("gemma3-270m", "self", 8192) is None
    before = sorted(p.name for p in (tmp_path / "priors").iterdir())
    got = get_or_build_prior(model, tok, "smollm2-135m", n_tokens=8192)  # loads; builds nothing
    assert torch.equal(got.sums, smollm_prior.sums)
    assert sorted(p.name for p in (tmp_path / "priors").iterdir()) == before
    listed = {(c.model, c.source, c.tokens) for c in list_cached_priors()}
    assert listed == {("smollm2-135m", "self", smollm_prior.n_tokens)}
    with pytest.raises(PriorError, match="does not exist"):
        get_or_build_prior(model, tok, "smollm2-135m", path=tmp_path / "missing.safetensors")
    assert not (tmp_path / "missing.safetensors").exists()


def test_the_build_notice_counts_the_calibration_not_just_the_sampling(tmp_path, monkeypatch):
    """Sampling is the short part of a default build; the notice says so on a first build, and
    quotes both times once a build has measured them (the rate file of an older version still reads)."""
    import json

    from glass_llm.prior_cache import _rates_path, build_notice, measured_build, record_rate

    monkeypatch.setenv("GLASS_LLM_CACHE", str(tmp_path))
    first = build_notice("smollm2-135m", "self", 8192)
    assert "first build on this machine" in first and "calibration" in first and "several times longer" in first
    record_rate("smollm2-135m", 200.0)  # sampled, calibration not run (glass prior --no-calibration)
    assert measured_build("smollm2-135m") == (200.0, None)
    assert "about 41 s of sampling at 200 tokens/s" in build_notice("smollm2-135m", "self", 8192)
    assert "then the selection calibration, which takes much longer" in build_notice("smollm2-135m", "self", 8192)
    record_rate("smollm2-135m", 180.0, 1260.0)
    record_rate("smollm2-135m", 160.0)  # a later build without calibration keeps the calibration time
    assert measured_build("smollm2-135m") == (160.0, 1260.0)
    assert "about 51 s of sampling at 160 tokens/s and 21 min of selection calibration" in build_notice(
        "smollm2-135m", "self", 8192)
    assert measured_build("gemma3-270m") == (None, None)
    _rates_path().write_text(json.dumps({"smollm2-135m": 99.5, "gemma3-270m": {"tokens_per_s": "x"}}))
    assert measured_build("smollm2-135m") == (99.5, None) and measured_build("gemma3-270m") == (None, None)
    _rates_path().write_text("{not json")
    assert measured_build("smollm2-135m") == (None, None)


# --- self-sampling: batched, single-pass, the same tokens as a second pass would count ----------


def test_batched_sampling_equals_one_sequence_per_forward(smollm):
    """N sequences per forward sample the same tokens as one per forward (each sequence
    has its own uniforms) and record the same statistic. Exact float equality is not
    possible: a batch of N and a batch of 1 take different BLAS paths, so logits and
    activations differ in the last bits. The sums agree to 1e-4 (relative); a rounding
    difference could in principle move a uniform across a token boundary of the CDF,
    measured at about 1 token in 10^3-10^4, so the sequences here are short."""
    from glass_llm.adapters import find_ffn_blocks
    from glass_llm.self_sample import sample_and_record

    model, tok = smollm
    blocks = find_ffn_blocks(model)
    seqs = [0, 3, 4, 6]
    sums, counts, tokens = sample_and_record(model, tok, blocks, seqs, 12, seed=5)
    for r, i in enumerate(seqs):
        s1, c1, t1 = sample_and_record(model, tok, blocks, [i], 12, seed=5)
        assert torch.equal(t1[0], tokens[r]) and int(c1[0]) == int(counts[r])
        for a, b in zip(s1, sums):
            assert torch.allclose(a[0], b[r], rtol=1e-4, atol=1e-6)


def test_single_pass_statistic_equals_a_second_pass_over_the_sampled_text(smollm):
    """The statistic recorded while sampling covers exactly the generated tokens up to and
    including EOS (no prompt token, nothing after EOS): the same as a teacher-forced pass."""
    from glass_llm.adapters import find_ffn_blocks
    from glass_llm.calibrate import ActivationRecorder
    from glass_llm.self_sample import eos_ids_of, sample_and_record, self_prompts

    model, tok = smollm
    blocks = find_ffn_blocks(model)
    seqs, L = [4, 5, 8], 32
    sums, counts, tokens = sample_and_record(model, tok, blocks, seqs, L, seed=0)
    eos = set(eos_ids_of(model, tok))
    assert any(int(c) < L for c in counts), "needs a sequence that ends in EOS"
    prompts = self_prompts(tok)
    for r, i in enumerate(seqs):
        gen = tokens[r].tolist()
        n = next((t + 1 for t, x in enumerate(gen) if x in eos), L)
        assert n == int(counts[r])
        prompt = prompts[i % len(prompts)]
        ids = torch.tensor([prompt + gen[:n]])
        mask = torch.zeros_like(ids)
        mask[0, len(prompt):] = 1
        rec = ActivationRecorder(model, blocks)
        with rec:
            rec.run(model, ids, mask, attention_mask=torch.ones_like(ids))
        assert rec.tokens == n
        for a, b in zip(rec.sums, sums):
            assert torch.allclose(a, b[r], rtol=1e-4, atol=1e-5)


def test_greedy_continuation_is_the_dense_argmax_and_only_it_is_recorded(smollm):
    """With ``greedy_after = n`` the first n tokens are the sampled ones (the same as plain
    sampling draws), every later token is the dense model's most likely next token, and the
    statistic covers exactly the greedy tokens (a teacher-forced pass over them agrees)."""
    from glass_llm.adapters import find_ffn_blocks
    from glass_llm.calibrate import ActivationRecorder
    from glass_llm.self_sample import sample_and_record, self_prompts

    model, tok = smollm
    blocks = find_ffn_blocks(model)
    seqs, L, n = [2, 7], 14, 5
    sums, counts, tokens = sample_and_record(model, tok, blocks, seqs, L, seed=3, greedy_after=n)
    _, _, sampled = sample_and_record(model, tok, blocks, seqs, n, seed=3)
    assert torch.equal(tokens[:, :n], sampled)
    assert counts.tolist() == [L - n] * len(seqs)
    prompts = self_prompts(tok)
    for r, i in enumerate(seqs):
        prompt = prompts[i % len(prompts)]
        ids = torch.tensor([prompt + tokens[r].tolist()])
        logits = model(input_ids=ids).logits[0]
        start = len(prompt)
        assert torch.equal(logits[start + n - 1:start + L - 1].argmax(-1), tokens[r, n:])
        mask = torch.zeros_like(ids)
        mask[0, start + n:] = 1
        rec = ActivationRecorder(model, blocks)
        with rec:
            rec.run(model, ids, mask, attention_mask=torch.ones_like(ids))
        for a, b in zip(rec.sums, sums):
            assert torch.allclose(a, b[r], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="greedy_after"):
        sample_and_record(model, tok, blocks, seqs, L, seed=3, greedy_after=L)


def test_greedy_mean_activation_is_the_mean_over_the_greedy_tokens(smollm):
    """The calibration's mean activation of greedy text (what the compensated methods add
    back) is the plain mean of every neuron's raw activation over exactly the greedy
    tokens, each sequence run alone without padding; the statistic beside it is the
    recorder's sums over the same tokens."""
    from glass_llm.adapters import find_ffn_blocks
    from glass_llm.calibration import GREEDY_OFFSET, greedy_statistic
    from glass_llm.self_sample import sample_and_record, self_prompts

    model, tok = smollm
    blocks = find_ffn_blocks(model)
    rows, prefix, length = 3, 4, 9
    sums, n, mean = greedy_statistic(model, tok, blocks, seed=1, rows=rows, prefix=prefix, length=length)
    indices = list(range(GREEDY_OFFSET, GREEDY_OFFSET + rows))
    ref_sums, counts, tokens = sample_and_record(model, tok, blocks, indices, prefix + length, 1, greedy_after=prefix)
    assert n == int(counts.sum()) and torch.equal(sums, torch.stack([s.sum(0) for s in ref_sums]))
    prompts = self_prompts(tok)
    total = [torch.zeros(b.d_ff) for b in blocks]
    for r, i in enumerate(indices):
        prompt = prompts[i % len(prompts)]
        ids = torch.tensor([prompt + tokens[r, : prefix + int(counts[r])].tolist()])
        seen = {}
        hooks = [b.output_module.register_forward_pre_hook(
            lambda mod, args, j=j: seen.__setitem__(j, args[0][0].float())) for j, b in enumerate(blocks)]
        try:
            model(input_ids=ids)
        finally:
            for h in hooks:
                h.remove()
        for j in range(len(blocks)):
            total[j] += seen[j][len(prompt) + prefix:].sum(0)
    expected = torch.stack(total) / n
    assert mean.shape == sums.shape
    assert torch.allclose(mean, expected, rtol=1e-4, atol=1e-5)
    assert bool((mean != 0).any())


def test_sampling_batch_depends_on_the_budget_only():
    """The batch shape never depends on the number of processes (1 and N build the same prior)."""
    from glass_llm.build import sampling_batch

    assert sampling_batch(65, 16, 2) == 2 and sampling_batch(40, 12, 64) == 4 and sampling_batch(8192, 128, 64) == 64
