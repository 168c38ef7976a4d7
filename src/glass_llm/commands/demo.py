"""glass demo: what GLASS buys over GRIFFIN, on the default model and one prompt.

For a few densities (the fraction of FFN neurons kept while decoding) it prints each
method's KL divergence to the dense model, measured teacher-forced over the dense
model's own greedy continuation, and its decode speed-up over dense, measured in
interleaved rounds exactly as `glass bench` does. Then it shows the dense, GRIFFIN and
GLASS texts at the density where GLASS's advantage is clearest while GLASS still stays
close to dense, and says why it chose that density.
"""

from __future__ import annotations

import sys

from .common import add_compile_arg, add_model_arg, add_prior_tokens_arg, compile_generate_kwargs, floats, model_kwargs

DEMO_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
METHODS = ("griffin", "glass")
# A GLASS continuation whose mean per-token KL to dense stays under this reads as fluent
# text close to the dense one; above it, greedy decoding tends to drift or repeat.
READABLE_KL = 0.5


def register(sub) -> None:
    p = sub.add_parser("demo", help="show what GLASS buys over GRIFFIN: fidelity and speed, side by side",
                       description=__doc__)
    add_model_arg(p)
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--densities", type=floats, default=[0.9, 0.7, 0.5],
                   help="comma-separated densities for the table (default 0.9,0.7,0.5)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens of each text and of the KL reference")
    p.add_argument("--bench-tokens", type=int, default=32, help="new tokens per timed run (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--prior", default=None, help="prior file (default: the model's cached default prior)")
    p.add_argument("--loop-guard", type=int, default=4, metavar="K",
                   help="also show GLASS's text with the loop guard: K dense decode steps whenever the reply "
                        "repeats a 4-gram (default 4; 0: not shown)")
    add_prior_tokens_arg(p)
    add_compile_arg(p)
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _kl_table(model, prompt_ids, ref, prior, densities) -> dict[tuple[str, float], float]:
    """Mean per-token KL(dense || method) over the dense continuation (teacher-forced)."""
    from ..engine import GlassConfig
    from ..metrics import kl_per_token
    from ..teacher import continuation_logits

    dense, _ = continuation_logits(model, prompt_ids, ref)
    out = {}
    for d in densities:
        for m in METHODS:
            logits, _ = continuation_logits(model, prompt_ids, ref, GlassConfig(method=m, density=d), prior)
            # the first token comes from the dense prefill for every method
            out[(m, d)] = float(kl_per_token(dense[:, 1:], logits[:, 1:]).mean())
    return out


def _speedups(model, prompt_ids, prior, densities, args, pad_id) -> dict[tuple[str, float], object]:
    """glass_llm.bench's interleaved rounds, every method and density side by side against
    the same dense runs; records by (method, density). With ``--compile`` dense and sparse
    decode are both compiled (the warm-up run pays it)."""
    from ..bench import BenchSettings, benchmark

    gen = {"pad_token_id": pad_id,
           **compile_generate_kwargs(args, model, prompt_ids.shape[1] + max(args.bench_tokens, 8))}
    _say(f"timing {', '.join(METHODS)} against dense ({args.repeats} interleaved rounds) ...")
    settings = BenchSettings(densities=tuple(densities), gen_tokens=args.bench_tokens, repeats=args.repeats,
                             methods=METHODS)
    return {(rec.method, rec.density): rec
            for rec in benchmark(model, prompt_ids, settings, model_name=args.model, prior=prior, generate_kwargs=gen)}


def choose_density(kl: dict[tuple[str, float], float], densities) -> tuple[float, str]:
    """The density to show texts at, and why: among densities where GLASS's KL stays
    under READABLE_KL, the one where GRIFFIN's KL exceeds GLASS's the most."""
    readable = [d for d in densities if kl[("glass", d)] <= READABLE_KL]
    if not readable:
        d = max(densities)
        return d, f"density {d:g}: GLASS's KL exceeds {READABLE_KL:g} at every density, so the densest one is shown"
    d = max(readable, key=lambda x: (kl[("griffin", x)] - kl[("glass", x)], -x))
    gap = kl[("griffin", d)] - kl[("glass", d)]
    rest = [x for x in densities if x not in readable]
    why = (f"density {d:g}: GRIFFIN's KL exceeds GLASS's by {gap:.3f} ({kl[('griffin', d)]:.3f} vs "
           f"{kl[('glass', d)]:.3f}), the largest gap among densities where GLASS's KL stays under {READABLE_KL:g}")
    if rest:
        why += f"; at {', '.join(f'{x:g}' for x in rest)} GLASS's KL is above that bound"
    if gap <= 0:
        why += " (here GLASS is not closer to dense than GRIFFIN)"
    return d, why


def loop_note(tokens: list[int]) -> str:
    """A label suffix saying that a text has fallen into a loop (``metrics.falls_into_loop``)."""
    from ..metrics import falls_into_loop, repeated_ngram_share

    if not falls_into_loop(tokens):
        return ""
    share = repeated_ngram_share(tokens[len(tokens) // 2:])
    return f", falls into a loop ({share:.0%} of its second half's 4-grams repeat)"


def _generate(model, enc, config, prior, n):
    import torch

    from ..engine import apply_glass

    with torch.no_grad():
        if config is None:
            return model.generate(**enc, max_new_tokens=n, do_sample=False)
        with apply_glass(model, config, prior=prior):
            return model.generate(**enc, max_new_tokens=n, do_sample=False)


def _guarded(model, enc, prior, density: float, steps: int, n: int):
    """GLASS's greedy reply with the loop guard, and a label suffix with its dense steps."""
    import torch

    from ..engine import GlassConfig, apply_glass

    with torch.no_grad(), apply_glass(model, GlassConfig(method="glass", density=density, loop_guard=steps),
                                      prior=prior) as handle:
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
        g = handle.guard
        note = "" if g is None else f", {g.dense_steps} of {g.steps_seen} decode steps dense"
    return out, f"glass, density {density:g}, loop guard {steps}{note}"


def run(args) -> int:
    from ..build import get_or_build_prior
    from ..engine import GlassConfig
    from ..models import load_model
    from ..ranking import check_density
    from .generate import encode_prompt

    if not args.densities:
        raise ValueError("give at least one density with --densities")
    if args.loop_guard < 0:
        raise ValueError(f"--loop-guard must be a whole number of dense steps >= 1 (or 0: not shown), "
                         f"got {args.loop_guard}")
    for d in args.densities:
        check_density(d)
        if d >= 1:
            raise ValueError(f"--densities must be below 1 (1 is the dense model), got {d:g}")
    _say(f"loading {args.model} ...")
    model, tok = load_model(args.model, **model_kwargs(args))
    prior = get_or_build_prior(model, tok, args.model, path=args.prior, n_tokens=args.prior_tokens)
    enc = encode_prompt(tok, args.prompt, raw=False)
    ids = enc["input_ids"]
    P = ids.shape[1]
    densities = sorted(set(args.densities), reverse=True)
    _say("dense reference and KL ...")
    ref = _generate(model, enc, None, prior, args.max_new_tokens)[:, P:]
    kl = _kl_table(model, ids, ref, prior, densities)
    speed = _speedups(model, ids, prior, densities, args, tok.pad_token_id)

    print(f"\n{args.model}, prompt ({P} tokens): {args.prompt!r}")
    print(f"KL(dense||method): mean per-token KL over the dense model's {ref.shape[1]}-token greedy reply, "
          "teacher-forced (0 = identical predictions).")
    compiled = " (compiled decode, dense and sparse)" if args.compile else ""
    print(f"speed-up: decode tokens/s over dense{compiled}, median of {args.repeats} interleaved rounds of "
          f"{args.bench_tokens} tokens (glass_llm.bench); ideal = the speed-up if the FFN time scaled with density.\n")
    print(f"{'density':>7}  {'method':<8} {'KL(dense||m)':>12} {'speed-up':>9} {'ideal':>6}")
    print(f"{1:>7.2f}  {'dense':<8} {0:>12.3f} {1:>8.2f}x {1:>5.2f}x")
    for d in densities:
        for m in METHODS:
            rec = speed[(m, d)]
            print(f"{d:>7.2f}  {m:<8} {kl[(m, d)]:>12.3f} {rec.speedup:>8.2f}x {rec.ideal_speedup:>5.2f}x")
    chosen, why = choose_density(kl, densities)
    print(f"\nTexts at {why}.\n")
    texts = {"dense": ref}
    for m in METHODS:
        texts[m] = _generate(model, enc, GlassConfig(method=m, density=chosen), prior, args.max_new_tokens)[:, P:]
    labels = {name: name if name == "dense" else f"{name}, density {chosen:g}, KL {kl[(name, chosen)]:.3f}"
              for name in texts}
    if args.loop_guard:
        out, labels["guard"] = _guarded(model, enc, prior, chosen, args.loop_guard, args.max_new_tokens)
        texts["guard"] = out[:, P:]
    for name, out in texts.items():
        label = labels[name] + loop_note(out[0].tolist())
        print(f"--- {label} ---\n{tok.decode(out[0], skip_special_tokens=True).strip()}\n")
    print("GRIFFIN picks the neurons from the prompt alone; GLASS merges that ranking with a prior of the "
          "neurons the model\nuses in general, so it keeps the ones a long reply will need even when the prompt "
          "did not show them.")
    if args.loop_guard:
        print("The loop guard runs a decode step with the dense FFNs whenever the reply repeats a 4-gram it already "
              f"wrote, and\nthe next {args.loop_guard - 1} too: the dense model often writes its way out of a loop "
              "caught that early. Its dense steps\ncost speed (benchmarks/loop_guard.py measures both).")
    return 0
