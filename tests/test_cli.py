"""The glass command line on the real default model."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from glass_llm.cli import CLIError, build_parser, main
from glass_llm.distributed import DistributedError
from glass_llm.engine import GlassError
from glass_llm.evaluate import EvalError
from glass_llm.models import ModelNotAvailableError
from glass_llm.prior import PriorError
from glass_llm.runner import run_command


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "glass_llm", *args], capture_output=True, text=True, timeout=timeout)


def _glass(capsys, *args):
    """``glass ARGS`` run in this process (no new interpreter, torch import and model conversion to pay for):
    its exit status and what it printed, as ``_run`` gives them."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_help_lists_the_workflow():
    out = _run("--help")
    assert out.returncode == 0
    # each command heads its own line of the COMMAND list ("    eval    measure ..."), so
    # `eval` is found on its own line, not as part of `lm-eval`
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ") and line.strip()}
    assert {"demo", "prior", "generate", "eval", "bench", "lm-eval"} <= listed


@pytest.mark.parametrize("args, message", [
    (["generate", "smollm2-135m", "hi", "--density", "0"], "density must be in (0, 1]"),
    (["generate", "smollm2-135m", "hi", "--method", "best"], "unknown method 'best'"),
    (["generate", "smollm2-135m", "hi", "--lam", "2"], "lam must be in [0, 1]"),
    (["generate", "smollm2-135m", "   ", "--method", "griffin"], "empty prompt"),
    (["generate", "smollm2-135m", "hi", "--refresh", "-2"], "refresh must be a whole number"),
    (["generate", "smollm2-135m", "hi", "--refresh", "4", "--refresh-growth", "0.5"], "refresh_growth must be"),
    (["generate", "smollm2-135m", "hi", "--refresh", "4", "--refresh-halflife", "-1"], "refresh_halflife must be"),
    (["bench", "smollm2-135m", "--method", "glass-refresh", "--schedule-halflife", "nan"], "schedule_halflife must be"),
    (["generate", "smollm2-135m", "hi", "--method", "griffin", "--refresh", "8", "--compile"],
     "cannot be combined with --compile"),
    (["bench", "smollm2-135m", "--method", "glass-refresh", "--compile"], "cannot be combined with --compile"),
    (["generate", "smollm2-135m", "hi", "--dense-start", "-3"], "dense_start must be a whole number"),
    (["generate", "smollm2-135m", "hi", "--comp-tokens", "-1"], "comp_tokens must be"),
    (["generate", "smollm2-135m", "hi", "--method", "glass-schedule", "--comp-tokens", "8"],
     "adds none; use a compensated method"),
    (["bench", "smollm2-135m", "--method", "glass", "--dense-start", "16", "--compile"],
     "a dense start (--dense-start, or a method with one) cannot be combined with --compile"),
    (["generate", "smollm2-135m", "hi", "--loop-guard", "-1"], "loop_guard must be a whole number"),
    (["generate", "smollm2-135m", "hi", "--method", "glass-linear", "--linear-blocks", "-1"],
     "linear_blocks must be a whole number"),
    (["bench", "smollm2-135m", "--method", "glass", "--linear-blocks", "4"], "predicts none; use glass-linear"),
    (["generate", "smollm2-135m", "hi", "--method", "glass:refresh-growth=2"], "re-selects during decoding"),
    (["eval", "smollm2-135m", "--methods", "dense,glass-a:linear-blocks=2", "--out", "unused"],
     "predicts the neurons it leaves out, and 'glass-a' does not"),
    (["bench", "smollm2-135m", "--method", "glass-refresh:refreshh=8"], "unknown method option 'refreshh'"),
    (["generate", "smollm2-135m", "hi", "--loop-guard", "4", "--num-beams", "2"], "not with --compile or --num-beams"),
])
def test_bad_input_is_a_clear_error(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _parsed(error: BaseException):
    """Real parsed arguments of ``glass eval`` whose command raises ``error``."""
    args = build_parser().parse_args(["eval", "smollm2-135m", "--out", "unused"])

    def fail(_args):
        raise error

    args.func = fail
    return args


def test_internal_error_shows_its_traceback_and_exits_1(capsys):
    args = _parsed(RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu"))
    assert run_command(args) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in fail" in err
    assert "glass eval: internal error (RuntimeError)" in err and "please report it" in err


@pytest.mark.parametrize("error", [
    CLIError("--out is a file"), ValueError("density must be in (0, 1]"), PriorError("prior does not match"),
    EvalError("no methods given"), FileNotFoundError("no such file: x.txt"), GlassError("needs a prior"),
    ModelNotAvailableError("could not load model 'x'"), DistributedError("CUDA is not available here"),
])
def test_user_error_is_one_line_and_exits_2(error, capsys):
    assert run_command(_parsed(error)) == 2
    err = capsys.readouterr().err
    assert err == f"glass eval: error: {error}\n"


def test_debug_shows_the_traceback_of_a_user_error():
    args = _parsed(ValueError("bad"))
    args.debug = True
    with pytest.raises(ValueError, match="bad"):
        run_command(args)


def test_unknown_hub_model_offline():
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "glass_llm", "generate", "no/such-model-here", "hi", "--method",
                          "griffin"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2 and "could not load model 'no/such-model-here'" in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_and_prior(smollm_prior, tmp_path, capsys):
    from glass_llm.prior_cache import find_cached_prior

    prior = find_cached_prior("smollm2-135m", "self", 2048)  # the file smollm_prior came from
    assert prior is not None and prior.is_file()
    out = _run("generate", "smollm2-135m", "Name a colour.", "--prior", str(prior), "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "glass, density 0.5" in out.stderr
    # a prompt whose continuation repeats itself by copying, whichever build of the prior selects
    out = _glass(capsys, "generate", "smollm2-135m", "red blue green, " * 4, "--raw", "--prior", str(prior),
                 "--method", "glass-a", "--max-new-tokens", "40", "--loop-guard", "3")
    assert out.returncode == 0, out.stderr
    found = re.search(r"loop guard: (\d+) of 39 decode steps dense \((\d+) repeated 4-grams\)", out.stderr)
    assert found and int(found.group(1)) >= 3 and int(found.group(2)) >= 1, out.stderr
    out = _glass(capsys, "generate", "smollm2-135m", "Name a colour.", "--prior", str(prior), "--max-new-tokens", "8",
                 "--refresh", "3")
    assert out.returncode == 0, out.stderr
    found = re.search(r"(\d+) refreshes every 3 tokens .*: (\d+) tokens in", out.stderr)
    assert found, out.stderr
    refreshes, tokens = map(int, found.groups())
    assert refreshes == (tokens - 2) // 3  # the first token is the prefill's; sparse steps refresh every 3
    out = _glass(capsys, "generate", "smollm2-135m", "Name a colour.", "--prior", str(prior), "--max-new-tokens", "12",
                 "--refresh", "2", "--refresh-growth", "2", "--refresh-halflife", "4", "--dense-start", "3", "--raw",
                 "--schedule-halflife", "8")
    assert out.returncode == 0, out.stderr
    assert "per-layer density fading to one density (half-life 8 tokens)" in out.stderr
    found = re.search(r"dense start 3 tokens, (\d+) refreshes after 2 tokens, intervals growing 2x, half-life 4 tokens"
                      r".*: (\d+) tokens in", out.stderr)
    assert found, out.stderr
    refreshes, tokens = map(int, found.groups())
    # the prefill gives the first token and 3 dense forwards the next; of the tokens - 4 sparse
    # forwards after the selection, the 3rd and the 7th come after a refresh
    assert refreshes == sum(1 for end in (3, 7) if end <= tokens - 4)
    out = _glass(capsys, "generate", "smollm2-135m", "hi", "--prior", str(tmp_path / "corrupt.safetensors"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    out = _glass(capsys, "generate", "smollm2-135m", "hi", "--prior", str(bad))
    assert out.returncode == 2 and "corrupt or incomplete" in out.stderr


def test_demo_runs_end_to_end(smollm_prior):
    out = _run("demo", "--max-new-tokens", "12", "--prior-tokens", "2048", "--densities", "0.7,0.5",
               "--bench-tokens", "4", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert "building" not in out.stderr  # the cached prior is found
    for name in ("dense", "griffin", "glass"):
        assert f"--- {name}" in out.stdout
    assert re.search(r"--- glass, density 0\.\d, loop guard 4, \d+ of 11 decode steps dense", out.stdout), out.stdout
    assert "KL(dense||m)" in out.stdout and "speed-up" in out.stdout and "Texts at density" in out.stdout


def test_prior_list_shows_the_cached_default_prior(smollm_prior, capsys):
    out = _glass(capsys, "prior", "--list")
    assert out.returncode == 0, out.stderr
    assert "smollm2-135m" in out.stdout and "self" in out.stdout and str(smollm_prior.n_tokens) in out.stdout


def test_prior_show_prints_the_schedule_and_lam_table(smollm_prior, capsys):
    from glass_llm.prior_cache import find_cached_prior

    path = find_cached_prior("smollm2-135m", "self", 2048)
    out = _glass(capsys, "prior", "smollm2-135m", "--show", str(path), "--density", "0.5")
    assert out.returncode == 0, out.stderr
    fractions = out.stdout.split("fraction kept per block): ")[1].splitlines()[0].split()
    assert len(fractions) == 30 and all(0 < float(f) <= 1 for f in fractions)
    assert "lam (ranks)" in out.stdout and out.stdout.count("  block ") == 30
    assert "schedule check" in out.stdout


def test_prior_recalibrate_names_a_missing_file(tmp_path, capsys):
    out = _glass(capsys, "prior", "smollm2-135m", "--recalibrate", str(tmp_path / "none.safetensors"))
    assert out.returncode != 0 and "none.safetensors" in out.stderr and "Traceback" not in out.stderr


def test_lm_eval_sub_commands_pass_through_with_the_offline_tasks():
    from glass_llm.lm_eval_tasks import SUITE_TAG, TASK_NAMES

    # `validate` resolves the names through the same task index as `ls tasks`, in half its time
    out = _run("lm-eval", "validate", "--tasks", ",".join((SUITE_TAG, *TASK_NAMES)))
    assert out.returncode == 0, out.stderr
    assert "All tasks found and valid" in out.stdout + out.stderr and "not found" not in out.stdout + out.stderr


@pytest.mark.parametrize("command,extra", [
    ("demo", []), ("prior", []), ("generate", ["hello"]), ("eval", ["--out", "x"]), ("bench", []), ("serve", []),
])
def test_every_model_command_takes_device_and_dtype(command, extra):
    from glass_llm.cli import build_parser
    from glass_llm.commands.common import model_kwargs

    args = build_parser().parse_args([command, "smollm2-135m", *extra, "--device", "cpu", "--dtype", "bfloat16"])
    assert model_kwargs(args) == {"dtype": "bfloat16", "device": "cpu", "device_map": None}
    auto = build_parser().parse_args([command, "smollm2-135m", *extra])
    assert (auto.device, auto.dtype) == ("auto", "auto")


@pytest.mark.parametrize("command,extra", [("demo", []), ("generate", ["hello"]), ("bench", [])])
def test_decode_commands_take_compile(command, extra):
    from glass_llm.cli import build_parser
    from glass_llm.commands.common import compile_generate_kwargs

    args = build_parser().parse_args([command, "smollm2-135m", *extra, "--compile", "--max-cache-len", "300"])
    assert args.compile and args.max_cache_len == 300
    with pytest.raises(ValueError, match="shorter than prompt"):
        compile_generate_kwargs(args, None, 400)


def test_demo_labels_a_text_that_falls_into_a_loop():
    from glass_llm.commands.demo import loop_note

    assert loop_note(list(range(40))) == ""
    note = loop_note(list(range(10)) + [7, 8] * 20)
    assert "falls into a loop (91% of its second half" in note  # 20 of its 22 4-grams repeat
