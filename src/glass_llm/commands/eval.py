"""glass eval MODEL [--methods M,...] [--density D,...] [--prompt-tokens P,...] [--loop-guard K] --out DIR

Fidelity to the dense model (docs/method.md, section 7): for short prompts cut from held
documents, the dense model writes a greedy reference; every method is scored
teacher-forced on it (perplexity, KL(dense || method), Jaccard with the oracle set).
Writes DIR/results.{json,csv,md} and PNG plots; an interrupted run resumes.
"""

from __future__ import annotations

import sys

from .common import (add_loop_guard_arg, add_model_arg, add_prior_tokens_arg, add_weights_arg, floats, ints,
                     model_kwargs, names)


def register(sub) -> None:
    from .. import distributed
    from ..evaluate import DEFAULT_METHODS

    p = sub.add_parser("eval", help="measure how close each method stays to the dense model", description=__doc__)
    add_model_arg(p)
    p.add_argument("--methods", type=names, default=list(DEFAULT_METHODS),
                   help="comma-separated methods (default: %(default)s); 'oracle' adds the oracle-set upper bound; "
                        "a variant changes a method's decode options, BASE:option=value[:option=value], e.g. "
                        "glass-refresh:refresh=8 or glass-linear:linear-blocks=4; README, Command line)")
    p.add_argument("--density", type=floats, default=[0.5], help="comma-separated densities (default 0.5)")
    p.add_argument("--lam", type=floats, default=None,
                   help="comma-separated lam values for the tunable methods (default: the library default)")
    p.add_argument("--prompt-tokens", type=ints, default=[8, 16, 32, 64], help="prompt lengths (default 8,16,32,64)")
    p.add_argument("--gen-tokens", type=int, default=256, help="tokens of the dense reference (default 256)")
    p.add_argument("--prompts", type=int, default=32, help="prompts per prompt length (default 32)")
    p.add_argument("--corpus", default="wikipedia",
                   help="corpus name (wikipedia, coqa, lambada) or a text/JSONL file (default wikipedia)")
    p.add_argument("--split", default="test", choices=["test", "calib"],
                   help="documents to draw prompts from: 'test' (reported) or 'calib' (for choosing lam)")
    p.add_argument("--calib-every", type=int, default=4,
                   help="one document in this many (by a hash of its text) forms the calibration split")
    p.add_argument("--min-extra-tokens", type=int, default=16,
                   help="skip documents shorter than the prompt plus this many tokens (default 16)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per work item / generation batch")
    p.add_argument("--prior", default=None, help="prior file (default: built and cached on first use)")
    p.add_argument("--prior-source", default="self", help="source of a prior built on demand (default 'self')")
    add_prior_tokens_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random method and of prior sampling")
    add_weights_arg(p)
    add_loop_guard_arg(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--max-items", type=int, default=None,
                   help="stop after this many new work items (batches of prompts); resume later")
    p.add_argument("--write-partial", action="store_true",
                   help="write results from the finished items even if some are still missing")
    p.add_argument("--out", required=True, help="output folder (results, plots and the resume journal)")
    distributed.add_arguments(p)  # --nproc, --dist-timeout (see docs/distributed.md)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import distributed

    if distributed.should_launch(args.nproc):
        return distributed.launch(args, args.nproc)
    with distributed.init(device=args.device, timeout_s=args.dist_timeout) as ctx:
        return _run(args, ctx)


def _run(args, ctx) -> int:
    import torch

    from ..build import get_or_build_prior
    from ..evaluate import EvalSettings, run_eval
    from ..methods import DEFAULT_LAM
    from ..models import load_model
    from ..prior import load_prior

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = EvalSettings(
        model=args.model, corpus=args.corpus, methods=tuple(args.methods), densities=tuple(args.density),
        prompt_tokens=tuple(args.prompt_tokens), gen_tokens=args.gen_tokens, n_prompts=args.prompts,
        lams=tuple(args.lam) if args.lam else (DEFAULT_LAM,), split=args.split, calib_every=args.calib_every,
        min_extra_tokens=args.min_extra_tokens, batch_size=args.batch_size, seed=args.seed, weights=args.weights,
        loop_guard=args.loop_guard)
    settings.validate()
    from ..corpora import load_texts

    docs = load_texts(settings.corpus)  # fail on a bad corpus before loading the model
    print(f"loading {args.model} ...", file=sys.stderr)
    with ctx.local_main_first():  # the first load may convert and cache the model
        model, tok = load_model(args.model, **model_kwargs(args, device=str(ctx.device)))
    prior, prior_info = None, {}
    if settings.needs_prior():
        if args.prior:
            prior = load_prior(args.prior)
        else:
            prior = get_or_build_prior(model, tok, args.model, source=args.prior_source, n_tokens=args.prior_tokens,
                                       seed=args.seed, rank=ctx.rank, world=ctx.world, all_sum=ctx.all_sum)
        source = prior.meta.get("source", {})
        prior_info = {"prior_source": source.get("name", source.get("kind", "?")), "prior_tokens": prior.n_tokens,
                      "prior_fingerprint": prior.fingerprint}
        if prior.calibration is not None and prior.calibration.greedy_sums is not None:
            prior_info["prior_greedy_tokens"] = prior.calibration.greedy_tokens
        if prior.calibration is not None and prior.calibration.short_lam is not None:
            prior_info["prior_short_lam"] = prior.calibration.short_lam  # what glass fuses at up to 8 tokens
        if prior.calibration is not None and prior.calibration.reply_loss is not None:  # glass's per-layer density
            prior_info["prior_reply_schedule"] = [prior.calibration.use_reply_schedule(d) for d in settings.densities]
        if prior.calibration is not None and prior.calibration.neighbours_check is not None:  # glass's global view
            prior_info["prior_neighbours"] = prior.calibration.use_neighbours
    result = run_eval(model, tok, settings, prior=prior, out_dir=args.out, docs=docs, plots=not args.no_plots,
                      extra=prior_info, rank=ctx.rank, world=ctx.world, gather=ctx.all_gather_lists,
                      max_items=args.max_items, write_partial=args.write_partial)
    if not ctx.is_main():
        return 0
    from ..evaluate import results_markdown

    print(results_markdown(result.results))
    finished = {r["item"] for r in result.records}
    missing = sum(1 for it in result.items if it.id not in finished)
    if missing:
        print(f"{missing} of {len(result.items)} work items still to do: run the same command again to resume",
              file=sys.stderr)
    else:
        print(f"wrote {args.out}/results.json, results.csv, results.md and plots", file=sys.stderr)
    return 0
