"""How much of a sparse decode step is the runtime's own Python work?

    python benchmarks/decode_overhead.py [--model smollm2-135m] [--threads 1] [--rounds 30]

GLASS swaps each FFN block's projections for wrappers that read the compact weights
(``sliced.NeuronInput`` / ``NeuronOutput``), and a pre-hook on the model tells a prefill
from a decode step. One module per block with the compact computation written out
(``h = x W_in^T``, the layout's activation, ``y = z W_out^T``) would do the same matmuls
with fewer Python calls. This script measures what that would save, at batch 1 after a
real selection (glass-a, density 0.5, the default prior), in interleaved rounds
(the order of the two block timings alternates):

* per block: the owner MLP's forward through the wrappers against that written-out
  function on the same compact tensors (asserted equal first), microseconds per call;
* per step: the model's pre- and post-forward hooks on a decode call;
* for scale: one whole sparse decode step (eager, batch 1).

Writes ``benchmarks/results/decode-overhead-MODEL.json`` (medians and min-max over rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from glass_llm.adapters import activation_of
from glass_llm.build import get_or_build_prior
from glass_llm.engine import GlassConfig, apply_glass
from glass_llm.io import atomic_write
from glass_llm.models import load_model

PROMPT = "The history of the lighthouse on the northern coast begins in"


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def written_out(block, state):
    """The compact decode computation of one block as one function (what a single module would run)."""
    act = activation_of(block)
    gated = len(block.layout.inputs) == 2 or block.layout.fused == 2
    k = state.weight_out.shape[1]

    def fn(x):
        h = F.linear(x, state.weight_in, state.bias_in)
        if gated:
            g, u = h.split(k, dim=-1)
            z = act(g) * u
        else:
            z = act(h)
        return F.linear(z, state.weight_out, state.bias_out)

    return fn


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def markdown(paths: list[Path]) -> str:
    """One row per record: the wrappers' cost per block, the hooks' per step, and what one
    written-out module per block could save at most, against the step it belongs to."""
    lines = ["| model | blocks | threads | wrapped block | written out | wrappers' cost per block | hooks per step | "
             "decode step | at most saved per step |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(s: dict, fmt: str) -> str:
        return f"{fmt.format(s['median'])} ({fmt.format(s['min'])} to {fmt.format(s['max'])})"

    for path in paths:
        r = json.loads(Path(path).read_text(encoding="utf-8"))
        lines.append(f"| {r['model']} | {r['n_blocks']} | {r['threads']} | {r['wrapped_us']['median']:.0f} us | "
                     f"{r['written_out_us']['median']:.0f} us | {cell(r['wrapper_cost_us_per_block'], '{:.1f}')} us | "
                     f"{r['hooks_us']['median']:.1f} us | {r['step_ms']['median']:.1f} ms | "
                     f"{r['max_saving_ms_per_step']['median']:.2f} ms "
                     f"({100 * r['max_saving_share_of_step']['median']:.1f}%) |")
    return "\n".join(lines)


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=300, help="calls per timing in a round")
    ap.add_argument("--block", type=int, default=3, help="which FFN block to time")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    prior = get_or_build_prior(model, tok, args.model)
    handle = apply_glass(model, GlassConfig(method="glass-a", density=0.5), prior=prior)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    cache = model(input_ids=ids, use_cache=True).past_key_values  # prefill; the post-hook selects
    block, state = handle.blocks[args.block], handle.states[args.block]
    mlp, direct = block.owner, written_out(block, state)
    x = torch.randn(1, 1, state.weight_in.shape[1])
    torch.testing.assert_close(mlp(x), direct(x), rtol=1e-5, atol=1e-5)
    step_ids = ids[:, -1:]
    kwargs = {"input_ids": step_ids, "cache": cache, "use_cache": True}

    def hooks():
        handle._pre_forward(model, (), kwargs)
        handle._post_forward(model, (), kwargs, None)

    def step():
        model(input_ids=step_ids, cache=cache, use_cache=True)

    for fn in (lambda: mlp(x), lambda: direct(x), hooks):
        per_call_us(fn, 50)  # warm up
    res: dict[str, list[float]] = {"wrapped_us": [], "written_out_us": [], "hooks_us": [], "step_ms": []}
    for r in range(args.rounds):
        pair = [("wrapped_us", lambda: mlp(x)), ("written_out_us", lambda: direct(x))]
        for key, fn in pair if r % 2 == 0 else pair[::-1]:  # alternate which goes first
            res[key].append(per_call_us(fn, args.calls))
        res["hooks_us"].append(per_call_us(hooks, args.calls))
        res["step_ms"].append(per_call_us(step, 4) / 1000)  # the cache grows by 4 tokens per round
        print(f"round {r + 1}: wrapped {res['wrapped_us'][-1]:.1f} us, written out {res['written_out_us'][-1]:.1f} us, "
              f"hooks {res['hooks_us'][-1]:.1f} us, step {res['step_ms'][-1]:.1f} ms", flush=True)
    handle.remove()
    diff = [a - b for a, b in zip(res["wrapped_us"], res["written_out_us"])]
    n_blocks = len(handle.blocks)
    saving = [(d * n_blocks + h) / 1000 for d, h in zip(diff, res["hooks_us"])]
    record = {"model": args.model, "method": "glass-a", "density": 0.5, "threads": args.threads, "rounds": args.rounds,
              "calls": args.calls, "block": args.block, "n_blocks": n_blocks, "torch": torch.__version__,
              **{k: spread(v) for k, v in res.items()},
              "wrapper_cost_us_per_block": spread(diff),
              "max_saving_ms_per_step": spread(saving),
              "max_saving_share_of_step": spread([s / t for s, t in zip(saving, res["step_ms"])]),
              "raw": res}
    path = Path(args.out or Path(__file__).parent / "results" / f"decode-overhead-{args.model}.json")
    atomic_write(path, json.dumps(record, indent=2) + "\n")
    print(f"wrappers cost {record['wrapper_cost_us_per_block']['median']:.1f} us per block; hooks "
          f"{record['hooks_us']['median']:.1f} us per step; at most {record['max_saving_ms_per_step']['median']:.2f} ms "
          f"of a {record['step_ms']['median']:.1f} ms step ({100 * record['max_saving_share_of_step']['median']:.1f}%). "
          f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
