"""Small randomly initialised models of every supported architecture, built from configs.

For structural tests of architectures whose weights are not available on this machine;
SmolLM2-135M-Instruct and Gemma-3-270m (real weights) cover Llama and Gemma3 end to end.
"""

from __future__ import annotations

import torch
import transformers as tf

from glass_llm import find_ffn_blocks

SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=128)
ARCHS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3", "gpt2", "opt"]


def tiny_model(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = tf.LlamaConfig(**SMALL, num_key_value_heads=2)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**SMALL, num_key_value_heads=2)
    elif kind == "qwen3":
        cfg = tf.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=8)
    elif kind == "mistral":
        cfg = tf.MistralConfig(**SMALL, num_key_value_heads=2)
    elif kind == "phi3":
        cfg = tf.Phi3Config(**SMALL, num_key_value_heads=2, pad_token_id=0)
    elif kind == "gemma3":
        cfg = tf.Gemma3TextConfig(**SMALL, num_key_value_heads=2, head_dim=8, sliding_window=16)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128)
    elif kind == "opt":
        cfg = tf.OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                           max_position_embeddings=128, word_embed_proj_dim=32)
    else:
        raise KeyError(kind)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    # random init gives near-identical neurons; spread them so selection matters
    with torch.no_grad():
        for block in find_ffn_blocks(model):
            for mod in block.input_modules:
                mod.weight.mul_(torch.rand_like(mod.weight) * 4)
    return model


def tiny_prior_with_mean(model):
    """A prior of the tiny model's own random text, with a calibration that holds only what
    compensation reads (a made-up mean activation): a structural test of every layout."""
    from glass_llm.calibrate import ActivationRecorder
    from glass_llm.calibration import GRID
    from glass_llm.calibration_data import Calibration
    from glass_llm.dispersion import WINDOWS
    from glass_llm.prior import prior_from_sums

    ids = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(5))
    with ActivationRecorder(model) as rec:
        rec.run(model, ids)
    prior = prior_from_sums(model, rec.sums, rec.tokens, {"kind": "test"})
    L, d_ff = prior.sums.shape
    g = torch.Generator().manual_seed(2)
    prior.calibration = Calibration(
        grid=torch.tensor(GRID), profile=torch.ones(L, len(GRID)), windows=torch.tensor(WINDOWS, dtype=torch.float32),
        lam=torch.full((L, len(WINDOWS)), 0.5), score_lam=torch.full((L, len(WINDOWS)), 0.5),
        greedy_sums=torch.rand(L, d_ff, generator=g), greedy_mean=torch.randn(L, d_ff, generator=g),
        meta={"greedy_tokens": 64})
    return prior
