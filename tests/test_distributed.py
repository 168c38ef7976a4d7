"""Multi-process runs (torch.distributed, gloo on CPU) compared with single-process runs.

The multi-process runs are subprocesses (``glass ... --nproc 2`` or torchrun directly)
with a timeout, so a hang fails the test instead of blocking the suite. Every process
uses one CPU thread: matmul results depend slightly on the thread count, and the
comparisons here are about the split over processes only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import pickle
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from glass_llm import distributed
from glass_llm.build import batches_needed, build_prior
from glass_llm.corpora import load_texts
from glass_llm.evaluate import EvalSettings, run_eval
from glass_llm.prior import save_prior

REL_TOL = 1e-5
RUN_TIMEOUT_S = 300

WIKI_TEXT = """\
The river rises in the hills north of the town and flows south through a wide valley of farms and
orchards. In the nineteenth century mills were built along its banks, and the town grew around them.

The town hall was built in 1881 from local stone. Its clock was a gift from the mill owners, and the
council still meets in the panelled room on the first floor, under portraits of former mayors.

A railway reached the valley in 1868. Passenger trains ran until the line closed in 1963, and the old
station now houses a small museum about the mills and the people who worked in them.

The climate is mild, with most rain falling in winter. Apples, pears and plums are the main crops, and
a fruit market is held in the square every Saturday from late summer until the first frosts.

The parish church dates from the twelfth century. Its tower was rebuilt after a storm in 1703, and the
bells, cast in the same year, are still rung for weddings and on the evening before the harvest fair.
"""


def _env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(cmd: list[str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.5", *args]


def _prior_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["glass_prior"])
    return load_file(str(path)), meta


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max().clamp_min(1e-30))


@pytest.fixture
def one_thread():
    """Run the in-process single-process build with one thread, like each worker."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_batches_needed_is_the_first_prefix_reaching_the_budget():
    assert batches_needed([], 10) is None
    assert batches_needed([4, 4], 10) is None
    assert batches_needed([4, 4, 4], 10) == 3
    assert batches_needed([4, 4, 4, 4], 10) == 3  # a later batch (another process's) is not needed
    assert batches_needed([10], 10) == 1


def test_single_process_context_without_launcher(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.launch_info() is None
    assert not distributed.should_launch(1)
    assert distributed.should_launch(2)
    with pytest.raises(distributed.DistributedError):
        distributed.should_launch(0)
    with distributed.init() as ctx:
        assert (ctx.rank, ctx.world, ctx.is_main()) == (0, 1, True)
        t = torch.arange(3.0)
        assert torch.equal(ctx.all_sum(t), t)
        assert ctx.all_sum_count(7) == 7
        assert ctx.gather_objects({"a": 1}) == [{"a": 1}]
        assert ctx.all_gather_objects("x") == ["x"]
        ctx.barrier()


def _compare_priors(single, path: Path) -> dict:
    tensors, meta = _prior_file(path)
    assert meta["n_tokens"] == single.n_tokens
    assert meta["source"] == single.meta["source"]
    rel = _max_rel_diff(single.sums, tensors["activation_sumsq"])
    assert rel <= REL_TOL, f"1 vs 2 processes differ by {rel:.3g} (relative)"
    return meta


@pytest.mark.slow
def test_self_prior_two_processes_equals_one(smollm, tmp_path, one_thread):
    """65 tokens of 2 x 16-token sequences need 3 batches: an odd count, so with 2
    processes the second one samples a 4th batch in the last round that must be dropped."""
    model, tok = smollm
    settings = dict(n_tokens=65, seq_len=16, batch_size=2, seed=3)
    single = build_prior(model, tok, progress=False, **settings)
    assert single.meta["source"]["batches"] % 2 == 1, "the test needs an odd number of batches"

    out = tmp_path / "two.safetensors"
    proc = _run([sys.executable, "-m", "glass_llm", "prior", "smollm2-135m", "-o", str(out), "--tokens", "65",
                 "--seq-len", "16", "--batch-size", "2", "--seed", "3", "--nproc", "2", "--no-calibration"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes" in proc.stderr
    meta = _compare_priors(single, out)
    assert meta["source"]["batches"] == single.meta["source"]["batches"]


@pytest.mark.slow
def test_text_prior_under_torchrun_equals_one_process(smollm, tmp_path, one_thread):
    model, tok = smollm
    text = tmp_path / "valley.txt"
    text.write_text(WIKI_TEXT, encoding="utf-8")
    single = build_prior(model, tok, source=str(text), n_tokens=10_000, seq_len=16, batch_size=2, progress=False)
    assert single.meta["source"]["batches"] >= 3

    out = tmp_path / "two.safetensors"
    proc = _run(_torchrun(2, "-m", "glass_llm", "prior", "smollm2-135m", "-o", str(out), "--source", str(text),
                          "--tokens", "10000", "--seq-len", "16", "--batch-size", "2", "--no-calibration"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _compare_priors(single, out)


@pytest.mark.slow
def test_error_on_every_rank_fails_the_run(tmp_path):
    out = tmp_path / "never.safetensors"
    proc = _run([sys.executable, "-m", "glass_llm", "prior", "smollm2-135m", "-o", str(out), "--source",
                 str(tmp_path / "missing.txt"), "--nproc", "2"])
    assert proc.returncode != 0
    assert "unknown text source" in proc.stderr
    assert "(rank 1)" in proc.stderr or "(rank 0)" in proc.stderr
    assert "2-process run failed" in proc.stderr
    assert not out.exists()


def _fail_internal(args):
    raise RuntimeError("shape mismatch in block 3")


def _fail_user(args):
    raise distributed.DistributedError("--nproc must be at least 1, got 0")


@pytest.mark.parametrize("func, status, traceback", [(_fail_internal, 1, True), (_fail_user, 2, False)])
def test_worker_reports_like_the_cli(tmp_path, capsys, func, status, traceback):
    """A worker's internal error keeps its traceback (exit 1); a user error is one line (exit 2)."""
    import argparse

    path = tmp_path / "args.pkl"
    path.write_bytes(pickle.dumps(argparse.Namespace(command="prior", func=func, debug=False)))
    assert distributed.worker_main([str(path)]) == status
    err = capsys.readouterr().err
    assert ("Traceback" in err) is traceback
    assert err.strip().splitlines()[-1].startswith("glass prior: ")


_WORKER = textwrap.dedent("""\
    import sys, time
    import torch
    from glass_llm import distributed

    mode = sys.argv[1]
    with distributed.init(timeout_s=float(sys.argv[2])) as ctx:
        if ctx.rank == 1:
            if mode == "raise":
                raise ValueError("rank 1 could not read its batch")
            time.sleep(120)  # stops answering without exiting
        ctx.all_sum(torch.ones(4))
        print("all ranks done", flush=True)
    """)


def _run_worker(tmp_path: Path, mode: str, timeout_s: float) -> subprocess.CompletedProcess:
    """Run the two-process worker; a hang past the subprocess timeout fails the test
    (``subprocess.TimeoutExpired``), which is far below the 600 s collective timeout."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER, encoding="utf-8")
    return _run(_torchrun(2, str(script), mode, str(timeout_s)), timeout=150)


def test_failing_rank_fails_the_run_instead_of_hanging(tmp_path):
    """Rank 0 waits in a collective while rank 1 raises: torchrun stops rank 0 and the
    run exits non-zero with rank 1's error, long before the collective timeout."""
    proc = _run_worker(tmp_path, "raise", timeout_s=600)
    assert proc.returncode != 0
    assert "rank 1 could not read its batch" in proc.stderr
    assert "all ranks done" not in proc.stdout
    assert "timed out" not in proc.stderr.lower()  # stopped by torchrun, not by the collective timeout


def test_collective_timeout_fails_a_silent_rank(tmp_path):
    """Rank 1 stops answering without exiting: rank 0's collective times out, rank 0
    fails, and torchrun stops rank 1."""
    proc = _run_worker(tmp_path, "sleep", timeout_s=5)
    assert proc.returncode != 0
    assert "timed out" in proc.stderr.lower()
    assert "all ranks done" not in proc.stdout


@pytest.mark.slow
def test_eval_two_processes_writes_the_same_records(smollm, tmp_path, one_thread):
    """4 work items (1 prompt each) split over 2 processes: the journal records and the
    results equal a single-process run."""
    model, tok = smollm
    corpus = tmp_path / "valley.txt"
    corpus.write_text(WIKI_TEXT, encoding="utf-8")
    prior_path = tmp_path / "prior.safetensors"
    prior = build_prior(model, tok, n_tokens=16, seq_len=16, batch_size=2, progress=False)
    save_prior(prior, prior_path)
    settings = EvalSettings(model="smollm2-135m", corpus=str(corpus), methods=("dense", "griffin", "glass-a"),
                            densities=(0.5,), prompt_tokens=(8,), gen_tokens=8, n_prompts=4, split="test",
                            min_extra_tokens=8, batch_size=1)
    one = run_eval(model, tok, settings, prior=prior, out_dir=tmp_path / "one", docs=load_texts(str(corpus)),
                   progress=False, plots=False, extra={"prior_source": "self", "prior_tokens": prior.n_tokens,
                                                            "prior_fingerprint": prior.fingerprint})
    assert len(one.items) == 4

    proc = _run([sys.executable, "-m", "glass_llm", "eval", "smollm2-135m", "--corpus", str(corpus),
                 "--methods", "dense,griffin,glass-a", "--density", "0.5", "--prompt-tokens", "8",
                 "--gen-tokens", "8", "--prompts", "4", "--min-extra-tokens", "8", "--batch-size", "1",
                 "--prior", str(prior_path), "--no-plots", "--out", str(tmp_path / "two"), "--nproc", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    journals = [sorted((tmp_path / d).glob("journal-*.jsonl")) for d in ("one", "two")]
    assert [p.name for p in journals[0]] == [p.name for p in journals[1]] == [f"journal-{one.key}.jsonl"]

    def records(path: Path) -> dict[str, list[dict]]:
        lines = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return {ln["item"]: ln["records"] for ln in lines}

    one_records = records(journals[0][0])
    assert len(one_records) == 4
    assert one_records == records(journals[1][0])
    results = [json.loads((tmp_path / d / "results.json").read_text(encoding="utf-8")) for d in ("one", "two")]
    assert results[0] == results[1]
