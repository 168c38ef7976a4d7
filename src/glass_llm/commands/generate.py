"""glass generate MODEL PROMPT [--method M] [--density D] [--lam L] [--prior FILE]"""

from __future__ import annotations

import sys
import time

from .common import (add_compile_arg, add_loop_guard_arg, add_model_arg, add_prior_tokens_arg, add_refresh_arg,
                     add_weights_arg, check_refresh_compile, compile_generate_kwargs, decode_options, model_kwargs)


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a sparsified model", description=__doc__)
    add_model_arg(p)
    p.add_argument("prompt", help="the prompt text ('-' reads standard input)")
    p.add_argument("--method", default="glass", help="dense, griffin, glass, glass-a, glass-i, global, magnitude, random, ..., "
                                                        "or a variant: BASE:option=value; README, Command line)")
    p.add_argument("--density", type=float, default=0.5, help="fraction of FFN neurons kept while decoding")
    p.add_argument("--lam", type=float, default=None, help="weight of the prompt ranking (glass methods)")
    p.add_argument("--prior", default=None, help="prior file (built and cached on first use if omitted)")
    add_prior_tokens_arg(p)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    add_refresh_arg(p)
    add_loop_guard_arg(p)
    add_weights_arg(p)
    add_compile_arg(p)
    p.set_defaults(func=run)


def encode_prompt(tok, prompt: str, raw: bool):
    if not prompt.strip():
        raise ValueError("empty prompt: give some text to continue")
    if not raw and getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
    return tok(prompt, return_tensors="pt")


def run(args) -> int:
    import torch
    from transformers import TextStreamer

    from ..build import get_or_build_prior
    from ..engine import GlassConfig, apply_glass
    from ..methods import get_method
    from ..models import load_model, model_device

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    config = GlassConfig(method=args.method, density=args.density, lam=args.lam, weights=args.weights,
                         loop_guard=args.loop_guard, **decode_options(args))
    spec, lam, _ = config.resolved()
    check_refresh_compile(args, config.refresh_every(spec), config.dense_start_of(spec))
    if args.loop_guard and (args.compile or args.num_beams > 1):
        raise ValueError("--loop-guard switches single decode steps to the dense FFNs by the reply's own tokens: "
                         "not with --compile or --num-beams > 1 (beams reorder the rows it follows)")
    model, tok = load_model(args.model, **model_kwargs(args))
    enc = encode_prompt(tok, prompt, args.raw).to(model_device(model))
    prior = None
    if get_method(args.method).needs_prior_at(lam):
        prior = get_or_build_prior(model, tok, args.model, path=args.prior, n_tokens=args.prior_tokens)
    torch.manual_seed(args.seed)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, num_beams=args.num_beams)
    if args.sample:
        gen.update(temperature=args.temperature, top_p=args.top_p)
    if args.num_beams == 1:
        gen["streamer"] = streamer
    gen.update(compile_generate_kwargs(args, model, enc["input_ids"].shape[1] + args.max_new_tokens))
    with apply_glass(model, config, prior=prior) as handle:
        t0 = time.perf_counter()
        out = model.generate(**enc, **gen)
        dt = time.perf_counter() - t0
        note = _refresh_note(handle)  # before leaving: removing GLASS forgets the request
    new = out.shape[1] - enc["input_ids"].shape[1]
    if args.num_beams > 1:
        print(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    print(f"[{spec.name}, density {args.density:g}, lam {lam:g}{note}: {new} tokens in {dt:.2f}s, "
          f"{new / dt:.1f} tok/s]", file=sys.stderr)
    return 0


def _refresh_note(handle) -> str:
    start = f", dense start {handle.dense_start} tokens" if handle.active and handle.dense_start else ""
    if handle.guard is not None:
        g = handle.guard
        start += f", loop guard: {g.dense_steps} of {g.steps_seen} decode steps dense ({g.triggers} repeated 4-grams)"
    if not handle.refresh_every:
        return start
    every = f"every {handle.refresh_every} tokens"
    if handle.refresh_growth != 1:
        every = f"after {handle.refresh_every} tokens, intervals growing {handle.refresh_growth:g}x"
    if handle.refresh_halflife:
        every += f", half-life {handle.refresh_halflife:g} tokens"
    if handle.schedule_halflife and handle.selector.k_even is not None:
        every += f", per-layer density fading to one density (half-life {handle.schedule_halflife:g} tokens)"
    if handle.comp_tokens:
        every += f", compensation mean following the reply (prior as {handle.comp_tokens:g} tokens)"
    return f"{start}, {handle.refreshes} refreshes {every} ({1e3 * handle.refresh_s:.0f} ms)"
