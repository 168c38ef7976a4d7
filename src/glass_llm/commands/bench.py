"""glass bench MODEL [--density 0.25,0.5,0.75] [--batch 1] [--repeats 3] [--json]

Decode speed of GLASS-sliced generation against the dense model, measured side by side
in one process (interleaved rounds), with the ideal speed-up from the FFN's share of a
decode step, the one-off selection cost and the peak memory.
"""

from __future__ import annotations

import json
import sys

from .common import (add_compile_arg, add_model_arg, add_prior_tokens_arg, add_refresh_arg, add_weights_arg,
                     check_refresh_compile, compile_generate_kwargs, decode_options, floats, ints, model_kwargs, names)


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure decode speed: dense vs. sparse, and the ideal", description=__doc__)
    add_model_arg(p)
    p.add_argument("--density", type=floats, default=[0.25, 0.5, 0.75],
                   help="comma-separated fractions of FFN neurons kept (default 0.25,0.5,0.75)")
    p.add_argument("--prompt-tokens", type=int, default=16, help="prompt length in tokens (default 16)")
    p.add_argument("--gen-tokens", type=int, default=256, help="new tokens per run, greedy (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--batch", type=ints, default=[1], help="batch size(s), comma-separated (default 1)")
    p.add_argument("--share-batch", action="store_true",
                   help="one neuron set per batch (from the rows' combined statistic) instead of one per row")
    p.add_argument("--method", type=names, default=["glass"],
                   help="selection method(s), comma-separated: several are timed side by side in the same "
                        "rounds against the same dense runs (default glass; see `glass generate`)")
    p.add_argument("--prior", default=None, help="prior file (built and cached on first use if omitted)")
    add_prior_tokens_arg(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (a list of objects for several densities or batches)")
    p.add_argument("--raw", action="store_true", help="with --json: include every run's timings")
    p.add_argument("--quiet", action="store_true", help="no progress on standard error")
    add_refresh_arg(p)
    add_weights_arg(p)
    add_compile_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..bench import BenchSettings, benchmark, format_table, machine_info, make_prompts
    from ..build import get_or_build_prior
    from ..engine import GlassConfig
    from ..models import load_model

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if any(b < 1 for b in args.batch):
        raise ValueError(f"batch sizes must be >= 1, got {args.batch}")
    if not args.method:
        raise ValueError("give at least one method with --method")
    needs_prior = False
    for method in args.method:
        config = GlassConfig(method=method, **decode_options(args))
        spec, lam, _ = config.resolved()
        check_refresh_compile(args, config.refresh_every(spec), config.dense_start_of(spec))
        needs_prior = needs_prior or spec.needs_prior_at(lam)
    info = machine_info()  # before the model: the huge-page probe reads a fresh allocation (memory.py)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"loading {args.model} ...")
    model, tok = load_model(args.model, **model_kwargs(args))
    prior = None
    if needs_prior:
        prior = get_or_build_prior(model, tok, args.model, path=args.prior, n_tokens=args.prior_tokens,
                                   progress=not args.quiet)
    settings = BenchSettings(densities=tuple(args.density), gen_tokens=args.gen_tokens, repeats=args.repeats,
                             method=args.method[0], methods=tuple(args.method), share_batch=args.share_batch,
                             weights=args.weights, **decode_options(args))
    gen_kwargs = {"pad_token_id": tok.pad_token_id,
                  **compile_generate_kwargs(args, model, args.prompt_tokens + args.gen_tokens)}
    records = []
    for batch in args.batch:
        ids = make_prompts(tok, batch, args.prompt_tokens)
        records += benchmark(model, ids, settings, model_name=args.model, prior=prior,
                             generate_kwargs=gen_kwargs, progress=say)
    if args.json:
        objs = [dict(r.to_json(with_raw=args.raw), machine=info) for r in records]
        print(json.dumps(objs[0] if len(objs) == 1 else objs, indent=2))
        return 0
    where = str(next(model.parameters()).device)
    compiled = ", compiled decode" if args.compile else ""
    int8 = ", int8 weights (dense too)" if args.weights == "int8" else ""
    print(f"{args.model} ({records[0].dtype} on {where}{compiled}{int8}), method {', '.join(args.method)}{', shared batch set' if args.share_batch else ''}; "
          f"prompt {args.prompt_tokens} tokens, {args.gen_tokens} new tokens greedy, median of {args.repeats} "
          f"interleaved rounds")
    gpus = f", GPU {', '.join(info['gpus'])}" if info.get("gpus") else ""
    print(f"{info['cpu']}, {info['cores']} cores{gpus}, torch {info['torch']}, {info['threads']} threads, "
          f"huge pages for large CPU tensors: {_yes_no(info['huge_pages'])}\n")
    print(format_table(records))
    print("\nspeedup = sparse/dense decode tokens/s; ideal = FFN time scaled by density (from a run with the FFN "
          "blocks skipped);\neffic = speedup/ideal; e2e = end-to-end (prefill + selection + decode) speed-up; "
          "sel = one-off selection + slicing;\nroof = bandwidth roofline speed-up (weight bytes read per step, dense/"
          "sparse); GB/s = sparse weight bytes per step / step time;\nffn% = FFN share of a dense decode step; RSS = peak resident memory "
          "of the sparse runs; +W = compact weights.")
    return 0


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "no"
