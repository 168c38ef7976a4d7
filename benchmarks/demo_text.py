"""Does greedy text collapse into repetition? Per method and density, on chat prompts.

    python benchmarks/demo_text.py [--model smollm2-135m] [--densities 0.5,0.7,0.9] [--gen-tokens 128]

Sixteen short chat prompts (the first is ``glass demo``'s), greedy decoding with the chat
template (plain text for a model without one), all prompts in one batch (left padding;
every row keeps its own neuron set).
Methods: dense, griffin, global, glass-a, glass-schedule, glass-greedy, glass, glass-refresh,
and ``oracle``: the static
set that the dense model's own greedy reply activates most (chosen from the reply it is
then asked to write, so no selection made before decoding can know more), decoded one
prompt at a time.

Repetition is measured on token ids: ``repeat4`` is the share of the reply's 4-grams that
already occurred earlier in the same reply (0 for text that never repeats itself, near 1
for a loop); a reply ``collapses`` when its second half has repeat4 >= 0.5. Two fidelity
figures per reply, each prompt scored alone (no padding): ``kl``, the mean KL(dense || method)
teacher-forced on the dense model's own reply (the protocol of ``glass eval`` on chat prompts;
the same selection the batch made, since a row's set depends on its prompt only), and ``ppl``,
the dense model's perplexity of the method's own reply (how likely the full model finds the text
the sparse one wrote). Writes ``benchmarks/results/demo-text-MODEL.json`` (every reply's text
and figures).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from glass_llm.build import get_or_build_prior
from glass_llm.commands.demo import DEMO_PROMPT
from glass_llm.engine import GlassConfig, apply_glass
from glass_llm.evaluation import oracle_sums
from glass_llm.io import atomic_write
from glass_llm.methods import GLOBAL_SOURCES, MethodSpec, register_global_source, register_method
from glass_llm.intervals import paired_ratio
from glass_llm.metrics import LOOP_SHARE, falls_into_loop, kl_per_token, perplexity, repeated_ngram_share
from glass_llm.models import load_model
from glass_llm.teacher import continuation_logits

PROMPTS = [
    DEMO_PROMPT,
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short poem about autumn leaves.",
    "Give three tips for staying focused while studying.",
    "Describe how a bicycle works.",
    "Write a letter to a friend about a trip to the mountains.",
    "What were the main causes of the French Revolution?",
    "Tell me a story about a robot who learns to paint.",
    "How do vaccines train the immune system?",
    "Write a recipe for a simple tomato soup.",
    "What is the difference between weather and climate?",
    "Summarize the plot of a detective novel you invent.",
    "Give advice to someone starting their first job.",
    "Explain how a computer stores numbers.",
    "Describe a busy market in the morning.",
    "Why do people learn foreign languages?",
]
METHODS = ("griffin", "global", "glass-a", "glass-schedule", "glass-greedy", "glass", "glass-refresh")
BASES = ("glass-a", "glass-schedule")  # the paired KL ratios of the markdown table
COLLAPSE = LOOP_SHARE

# The oracle's global scores: one prompt's activation sums over its dense reply, set before each use.
_ORACLE: list[torch.Tensor] = []


def _register_oracle() -> None:
    """The oracle as a static method whose global scores are ``_ORACLE`` (once per process)."""
    if "reply-oracle" in GLOBAL_SOURCES:
        return
    register_global_source("reply-oracle")(lambda blocks, prior, statistic, seed: list(_ORACLE))
    register_method(MethodSpec("reply-oracle", "static set of the dense reply's own top neurons", lam=0.0,
                               global_source="reply-oracle"))


def repeat4(tokens: list[int]) -> float:
    """Share of the 4-grams of ``tokens`` that already occurred earlier in them."""
    return repeated_ngram_share(tokens, 4)


def figures(tokens: list[int]) -> dict:
    return {"repeat4": repeat4(tokens), "repeat4_second_half": repeat4(tokens[len(tokens) // 2:]),
            "collapsed": falls_into_loop(tokens)}


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--densities", default="0.5,0.7,0.9")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"methods to run (default {','.join(METHODS)})")
    ap.add_argument("--oracle-densities", default="0.5", help="the oracle runs one prompt at a time: keep it short")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    prior = get_or_build_prior(model, tok, args.model)
    tok.padding_side = "left"
    if getattr(tok, "chat_template", None):
        chats = [[{"role": "user", "content": p}] for p in PROMPTS]
        enc = tok.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_tensors="pt",
                                      return_dict=True)
    else:  # a base model: the prompts as plain text
        enc = tok(PROMPTS, padding=True, return_tensors="pt")
    P = enc["input_ids"].shape[1]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen = dict(max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, do_sample=False, pad_token_id=pad,
               temperature=None, top_p=None, top_k=None)

    def prompt_ids(row: int) -> torch.Tensor:
        return enc["input_ids"][row][enc["attention_mask"][row].bool()].unsqueeze(0)

    def reply(tokens: torch.Tensor, row: int, config: GlassConfig | None = None) -> dict:
        """The figures of one reply ``tokens`` (G,) to prompt ``row`` (``config``: the method that wrote it)."""
        ids = tokens.tolist()
        logits = continuation_logits(model, prompt_ids(row), tokens.unsqueeze(0))[0][0, 1:]
        fig = {"ppl": perplexity(logits, tokens[1:])}
        if config is not None:  # KL on the dense reply, the selection made from this prompt alone
            sparse = continuation_logits(model, prompt_ids(row), dense[row:row + 1, P:], config, prior)[0][0, 1:]
            fig["kl"] = float(kl_per_token(dense_logits[row], sparse).mean())
        return {"prompt": PROMPTS[row], "text": tok.decode(ids, skip_special_tokens=True), **figures(ids), **fig}

    t0 = time.perf_counter()
    dense = model.generate(**enc, **gen)
    dense_logits = [continuation_logits(model, prompt_ids(r), dense[r:r + 1, P:])[0][0, 1:]
                    for r in range(len(PROMPTS))]
    runs = [{"method": "dense", "density": 1.0, "replies": [reply(dense[r, P:], r) for r in range(len(PROMPTS))]}]
    for d in (float(x) for x in args.densities.split(",")):
        for m in args.methods.split(","):
            config = GlassConfig(method=m, density=d)
            with apply_glass(model, config, prior=prior):
                out = model.generate(**enc, **gen)
            runs.append({"method": m, "density": d,
                         "replies": [reply(out[r, P:], r, config) for r in range(len(PROMPTS))]})
            print(_line(runs[-1]), flush=True)
    # the oracle: one prompt at a time, its set chosen from its own dense reply
    _register_oracle()
    for d in (float(x) for x in args.oracle_densities.split(",") if x):
        replies = []
        for r in range(len(PROMPTS)):
            keep = enc["attention_mask"][r].bool()
            ids = enc["input_ids"][r][keep].unsqueeze(0)
            sums = oracle_sums(model, ids, dense[r:r + 1, P:])
            _ORACLE[:] = [s[0] for s in sums]
            config = GlassConfig(method="reply-oracle", density=d)
            with apply_glass(model, config):
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen)
            replies.append(reply(out[0, ids.shape[1]:], r, config))
        runs.append({"method": "oracle", "density": d, "replies": replies})
        print(_line(runs[-1]), flush=True)
    record = {"model": args.model, "gen_tokens": args.gen_tokens, "prompts": PROMPTS, "collapse_threshold": COLLAPSE,
              "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0, "runs": runs}
    path = Path(args.out or Path(__file__).parent / "results" / f"demo-text-{args.model}.json")
    atomic_write(path, json.dumps(record, indent=1) + "\n")
    print(_line(runs[0]), f"-> {path}")
    return 0


def _summary(run: dict) -> tuple[float, int, int]:
    reps = run["replies"]
    return sum(x["repeat4"] for x in reps) / len(reps), sum(x["collapsed"] for x in reps), len(reps)


def _fidelity_cells(run: dict, runs: list[dict]) -> list[str]:
    """Mean KL, the dense model's geometric-mean perplexity of the replies, and the KL ratio to each
    of ``BASES`` at the same density (paired over the prompts, Fieller's 95% interval)."""
    reps = run["replies"]
    ppl = math.exp(sum(math.log(x["ppl"]) for x in reps) / len(reps))
    if "kl" not in reps[0]:
        return ["–", f"{ppl:.2f}", *("–" for _ in BASES)]
    kl = [x["kl"] for x in reps]
    cells = [f"{sum(kl) / len(kl):.3f}", f"{ppl:.2f}"]
    for base in BASES:
        other = next((r for r in runs if r["method"] == base and r["density"] == run["density"]), None)
        if other is None or other is run:
            cells.append("–")
            continue
        ci = paired_ratio(kl, [x["kl"] for x in other["replies"]])
        cells.append(f"{ci.mean:.2f} [{ci.low:.2f}, {ci.high:.2f}]")
    return cells


def markdown(path: Path) -> str:
    """The table of one record: per method and density, mean repeat4 and collapsed replies (and,
    where the record has them, KL, reply perplexity and paired KL ratios), then the first
    prompt's reply at the lowest density of every method."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    fidelity = "ppl" in doc["runs"][0]["replies"][0]
    lines = [f"`{doc['model']}`, {len(doc['prompts'])} chat prompts, greedy, {doc['gen_tokens']} new tokens. "
             f"repeat4: share of a reply's 4-grams seen earlier in it (mean over prompts); collapsed: replies "
             f"whose second half has repeat4 >= {doc['collapse_threshold']:g}."
             + (" KL: mean KL(dense || method) teacher-forced on the dense reply; reply ppl: the dense model's "
                "perplexity of the method's own reply (geometric mean over prompts); KL ratios paired over the "
                "prompts, 95% interval." if fidelity else ""), ""]
    head = ["method", "density", "repeat4", "collapsed"]
    if fidelity:
        head += ["KL", "reply ppl", *(f"KL / {b}" for b in BASES)]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    order = {m: i for i, m in enumerate(("dense", *METHODS, "glass-start", "glass-refresh-start", "oracle"))}
    for run in sorted(doc["runs"], key=lambda r: (-r["density"], order.get(r["method"], 99))):
        mean, bad, n = _summary(run)
        cells = [run["method"], f"{run['density']:g}", f"{mean:.2f}", f"{bad}/{n}"]
        if fidelity:
            cells += _fidelity_cells(run, doc["runs"])
        lines.append("| " + " | ".join(cells) + " |")
    low = min(r["density"] for r in doc["runs"])
    lines += ["", f"The first prompt ({doc['prompts'][0]!r}): the start of each reply at density {low:g}, and the "
              "dense model's.", "", "| method | reply (first 200 characters) |", "|---|---|"]
    for run in sorted(doc["runs"], key=lambda r: order.get(r["method"], 99)):
        if run["density"] in (1.0, low):
            text = " ".join(run["replies"][0]["text"].split())[:200].replace("|", "\\|")
            lines.append(f"| {run['method']} | {text} |")
    return "\n".join(lines)


def _line(run: dict) -> str:
    mean, bad, n = _summary(run)
    return f"{run['method']:<14} d={run['density']:.2f}  repeat4 {mean:.2f}  collapsed {bad}/{n}"


if __name__ == "__main__":
    raise SystemExit(main())
