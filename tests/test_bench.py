"""The speed benchmark runs end to end and reports complete records (no timed assertions)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from glass_llm.bench import BenchRecord, BenchSettings, benchmark, ffn_skipped, format_table
from glass_llm.engine import GlassConfig, apply_glass


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def _check(rec: BenchRecord, batch: int, density: float) -> None:
    d = rec.to_json()
    assert d["batch"] == batch and d["density"] == density
    for key in ("dense_tok_s", "sparse_tok_s", "speedup", "ideal_speedup", "efficiency", "e2e_speedup",
                "select_ms", "select_in_decode_steps", "peak_rss_mb"):
        assert isinstance(d[key], float) and math.isfinite(d[key]), key
    assert d["dense_tok_s"] > 0 and d["sparse_tok_s"] > 0 and d["peak_rss_mb"] > 0
    assert d["compact_weights_mb"] > 0
    json.dumps(d)


@pytest.mark.parametrize("batch,share", [(1, False), (3, False), (3, True)])
def test_benchmark_reports_complete_records(tiny, batch, share):
    ids = torch.randint(0, 256, (batch, 8))
    settings = BenchSettings(densities=(0.25, 0.5), gen_tokens=6, repeats=2, method="griffin",
                             share_batch=share, warmup_tokens=3)
    records = benchmark(tiny, ids, settings, model_name="tiny", generate_kwargs={"pad_token_id": 0})
    assert [r.density for r in records] == [0.25, 0.5]
    for rec in records:
        _check(rec, batch, rec.density)
        assert len(rec.raw["dense"]) == 2 and all(r["steps"] == 5 for r in rec.raw[f"d={rec.density:g}"])
    # compact weights: gate+up rows and down columns of the kept neurons (2 layers, 3 matrices
    # of 64 x 64 floats); per-row sets keep the union of the rows' sets plus a row mask
    one_set = 2 * 3 * 64 * 64 * 4 / 2**20
    if share or batch == 1:
        assert records[1].compact_weights_mb == pytest.approx(one_set)
    else:
        assert one_set <= records[1].compact_weights_mb <= 2 * one_set + 2 * batch * 128 * 4 / 2**20
    assert "effic" in format_table(records)


def test_benchmark_with_a_dense_start_times_its_dense_steps_apart(tiny):
    ids = torch.randint(0, 256, (1, 8))
    settings = BenchSettings(densities=(0.5,), gen_tokens=9, repeats=1, method="griffin", warmup_tokens=3,
                             dense_start=3)
    (rec,) = benchmark(tiny, ids, settings, model_name="tiny", generate_kwargs={"pad_token_id": 0})
    _check(rec, 1, 0.5)
    (run,) = rec.raw["d=0.5"]
    assert run["dense_steps"] == 3 and run["dense_steps_s"] > 0 and run["select_s"] > 0
    assert rec.dense_start_steps == 3


def test_int8_benchmark_runs_every_variant_in_int8_and_counts_int8_bytes(tiny):
    from glass_llm.bench_summary import linear_weight_bytes

    names = [n for n, _ in tiny.named_modules()]
    settings = BenchSettings(densities=(0.5,), gen_tokens=4, repeats=1, method="griffin", warmup_tokens=2,
                             weights="int8")
    (rec,) = benchmark(tiny, torch.randint(0, 256, (1, 6)), settings, generate_kwargs={"pad_token_id": 0})
    _check(rec, 1, 0.5)
    assert rec.weights == "int8" and [n for n, _ in tiny.named_modules()] == names  # undone
    # compact weights: int8 gate+up rows with their scales, int8 down columns
    assert rec.compact_weights_mb == pytest.approx(2 * (3 * 64 * 64 + 2 * 64 * 4) / 2**20)
    f32, ffn32 = linear_weight_bytes(tiny)
    i8, ffn8 = linear_weight_bytes(tiny, "int8")
    assert i8 < f32 / 3.5 and all(a < b / 3.5 for a, b in zip(ffn8, ffn32))
    assert rec.dense_weight_mb == pytest.approx(i8 / 2**20)


def test_ffn_skipped_restores_model(tiny):
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        ref = tiny(ids).logits
        with ffn_skipped(tiny):
            skipped = tiny(ids).logits
        again = tiny(ids).logits
    assert not torch.equal(ref, skipped)
    assert torch.equal(ref, again)


def test_benchmark_leaves_model_untouched(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    names = [n for n, _ in tiny.named_modules()]
    benchmark(tiny, torch.randint(0, 256, (1, 4)), BenchSettings(densities=(0.5,), gen_tokens=3, repeats=1,
              method="griffin", warmup_tokens=2), generate_kwargs={"pad_token_id": 0})
    assert [n for n, _ in tiny.named_modules()] == names
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("batch_kernel", ["union", "bmm"])
def test_sliced_kernels_match_masked(tiny, batch_kernel):
    ids = torch.randint(0, 256, (3, 6))
    logits = {}
    for path in ("sliced", "masked"):
        with torch.no_grad(), apply_glass(tiny, GlassConfig(method="griffin", density=0.3, path=path)) as handle:
            for st in handle.states:
                st.batch_kernel = batch_kernel
            out = tiny.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                                do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        logits[path] = torch.stack(out.logits)
    assert (logits["sliced"] - logits["masked"]).abs().max() <= 1e-4


def test_bad_settings_raise(tiny):
    from glass_llm.bench import BenchError

    with pytest.raises(BenchError):
        benchmark(tiny, torch.randint(0, 256, (1, 4)), BenchSettings(densities=(1.5,), gen_tokens=3, repeats=1))


def test_cli_json(tmp_path, capsys):
    """`glass bench FOLDER --json` on a tiny model that uses SmolLM2's tokenizer."""
    from transformers import AutoTokenizer

    from glass_llm.cli import main
    from glass_llm.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rc = main(["bench", str(tmp_path), "--density", "0.25,0.5", "--gen-tokens", "4", "--repeats", "1",
               "--prompt-tokens", "6", "--method", "griffin", "--json", "--quiet"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and [r["density"] for r in out] == [0.25, 0.5]
    for key in ("model", "density", "batch", "dense_tok_s", "sparse_tok_s", "speedup", "ideal_speedup",
                "efficiency", "e2e_speedup", "select_ms", "select_in_decode_steps", "peak_rss_mb"):
        assert key in out[0]
    assert out[0]["prompt_tokens"] == 6 and out[0]["gen_tokens"] == 4
    # the conditions that change the selection time travel with the figures
    from glass_llm.memory import huge_pages_active

    assert out[0]["machine"]["huge_pages"] == huge_pages_active()
    assert out[0]["machine"]["threads"] == torch.get_num_threads()
