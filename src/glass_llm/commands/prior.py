"""glass prior [MODEL] [-o FILE] [--source self|CORPUS|FILE] [--tokens N] [--nproc N] | glass prior --list

Without -o the prior is written where every command looks for the model's default prior
(the cache; see ``glass prior --list``), so building it once ahead of time means no
command builds it later. Runs data-parallel under ``torchrun --nproc_per_node N -m
glass_llm prior ...`` or with ``--nproc N``: the sequences are split over the processes,
the sums and token counts are summed, and rank 0 writes the file. The prior equals the
single-process one up to float summation order.
"""

from __future__ import annotations

import sys

from ..prior_cache import DEFAULT_PRIOR_SOURCE, DEFAULT_PRIOR_TOKENS, DEFAULT_SAMPLE_BATCH, DEFAULT_SAMPLE_LEN
from .common import add_model_arg, model_kwargs


def register(sub) -> None:
    from .. import distributed

    p = sub.add_parser("prior", help="build a global prior for a model", description=__doc__)
    add_model_arg(p)
    p.add_argument("-o", "--output", default=None,
                   help="where to write the prior (.safetensors; default: the cache, where every command finds it)")
    p.add_argument("--list", action="store_true", help="list the cached priors (path, model, source, tokens, size)")
    p.add_argument("--source", default=DEFAULT_PRIOR_SOURCE,
                   help="'self' (text the model samples itself, default), a corpus name, or a text/JSONL file")
    p.add_argument("--tokens", type=int, default=DEFAULT_PRIOR_TOKENS,
                   help=f"tokens to accumulate over (default {DEFAULT_PRIOR_TOKENS})")
    p.add_argument("--seq-len", type=int, default=None,
                   help=f"new tokens per sampled sequence (default {DEFAULT_SAMPLE_LEN}) or tokens per text chunk "
                        "(default 128)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"sequences per forward (default {DEFAULT_SAMPLE_BATCH} for 'self', 16 for text)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-calibration", action="store_true",
                   help="store the statistic only, without the glass method's selection calibration")
    distributed.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from .. import distributed
    from ..build import build_prior, calibrated
    from ..models import load_model
    from ..prior import save_prior
    from ..prior_cache import default_prior_path, format_cached, list_cached_priors, record_rate

    if args.list:
        print(format_cached(list_cached_priors()))
        return 0
    output = args.output or default_prior_path(args.model, args.source, args.tokens)
    if distributed.should_launch(args.nproc):
        return distributed.launch(args, args.nproc)
    with distributed.init(device=args.device, timeout_s=args.dist_timeout) as ctx:
        with ctx.local_main_first():  # the first load may convert and cache the model
            model, tok = load_model(args.model, **model_kwargs(args, device=str(ctx.device)))
        start = time.perf_counter()
        prior = build_prior(model, tok, source=args.source, n_tokens=args.tokens, seq_len=args.seq_len,
                            batch_size=args.batch_size, seed=args.seed, progress=ctx.is_main(),
                            rank=ctx.rank, world=ctx.world, all_sum=ctx.all_sum)
        if ctx.is_main():
            elapsed = time.perf_counter() - start
            if not args.no_calibration:
                prior = calibrated(model, tok, prior, seed=args.seed)
            save_prior(prior, output)
            if args.source == DEFAULT_PRIOR_SOURCE and ctx.world == 1:
                record_rate(args.model, prior.n_tokens / max(elapsed, 1e-9))
            procs = f" on {ctx.world} processes" if ctx.world > 1 else ""
            print(f"wrote {output}: {prior.sums.shape[0]} layers x {prior.sums.shape[1]} neurons, "
                  f"{prior.n_tokens} tokens from {args.source}{procs}", file=sys.stderr)
    return 0
