"""glass prior [MODEL] [-o FILE] [--source self|CORPUS|FILE] [--tokens N] [--nproc N] | glass prior --list
glass prior MODEL --show [FILE] [--density D] | glass prior MODEL --recalibrate [FILE]

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
    p.add_argument("--show", nargs="?", const="", default=None, metavar="FILE",
                   help="print a prior's contents: model, source, tokens, the glass method's per-block density "
                        "schedule and lam table (default: MODEL's cached default prior)")
    p.add_argument("--density", type=float, default=0.5, help="with --show: the density whose schedule to print")
    p.add_argument("--recalibrate", nargs="?", const="", default=None, metavar="FILE",
                   help="recompute the glass method's selection calibration of an existing prior in place, without "
                        "sampling its statistic again (default: MODEL's cached default prior); for older files")
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
    if args.show is not None:
        print(show_prior(args.show or None, args.model, args.density))
        return 0
    if args.recalibrate is not None:
        return recalibrate(args)
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
            sampled = time.perf_counter()
            if not args.no_calibration:
                prior = calibrated(model, tok, prior, seed=args.seed)
            save_prior(prior, output)
            if args.source == DEFAULT_PRIOR_SOURCE and ctx.world == 1:
                record_rate(args.model, prior.n_tokens / max(sampled - start, 1e-9),
                            None if args.no_calibration else time.perf_counter() - sampled)
            procs = f" on {ctx.world} processes" if ctx.world > 1 else ""
            print(f"wrote {output}: {prior.sums.shape[0]} layers x {prior.sums.shape[1]} neurons, "
                  f"{prior.n_tokens} tokens from {args.source}{procs}", file=sys.stderr)
    return 0


def _prior_path(path, model_name: str):
    """``path``, or the model's cached default prior."""
    from ..prior_cache import find_cached_prior

    if path:
        return path
    found = find_cached_prior(model_name, DEFAULT_PRIOR_SOURCE, DEFAULT_PRIOR_TOKENS)
    if found is None:
        raise FileNotFoundError(f"no cached default prior for {model_name}: build it with `glass prior {model_name}`"
                                " or name a file")
    return found


def recalibrate(args) -> int:
    """``glass prior MODEL --recalibrate [FILE]``: a new selection calibration, written in place."""
    from ..build import calibrated
    from ..models import load_model
    from ..prior import load_prior, save_prior

    path = _prior_path(args.recalibrate, args.model)
    prior = load_prior(path)
    model, tok = load_model(args.model, **model_kwargs(args))
    prior.check_matches(model)
    prior = calibrated(model, tok, prior, seed=args.seed)
    save_prior(prior, path)
    print(f"recalibrated {path} (format {prior.meta['format_version']})", file=sys.stderr)
    return 0


def show_prior(path, model_name: str, density: float) -> str:
    """The lines of ``glass prior --show``: what the prior holds and the schedule it gives."""
    from ..prior import load_prior
    from ..ranking import check_density
    from ..schedule import allocate

    check_density(density)
    path = _prior_path(path, model_name)
    prior = load_prior(path)
    meta = prior.meta
    n_blocks, d_ff = prior.sums.shape
    lines = [f"{path}", f"model: {meta.get('model', {}).get('name', '?')}, {n_blocks} FFN blocks x {d_ff} neurons",
             f"source: {meta.get('source', {})}, {prior.n_tokens} tokens"]
    cal = prior.calibration
    if cal is None:
        lines.append("no selection calibration (an older prior): the glass method computes it on first use; "
                     "rebuild with `glass prior MODEL` to store it")
        return "\n".join(lines)
    reply = cal.reply_loss is not None  # glass allocates from the schedule of greedy replies (format 7)
    k = allocate(cal.reply_profile if reply else cal.profile, cal.grid, [d_ff] * n_blocks, density)
    used = cal.use_reply_schedule(density) if reply else (cal.check_ratio is not None and cal.use_schedule(density))
    source = ("each block's loss on greedy replies" if reply else
              "the stored profile (this prior has no schedule of greedy replies)")
    lines.append(f"glass schedule at density {density:g}, from {source} (fraction kept per block): "
                 + " ".join(f"{n / d_ff:.2f}" for n in k))
    if not used:
        check = "schedule of greedy replies" if reply else "schedule check"
        lines.append(f"  not used at {density:g} (see the {check} below): the glass method keeps "
                     f"{density:g} of every block")
    lines += cal.summary()
    return "\n".join(lines)
