"""glass prior MODEL -o FILE [--source self|CORPUS|FILE] [--tokens N] [--nproc N]

Runs data-parallel under ``torchrun --nproc_per_node N -m glass_llm prior ...`` or with
``--nproc N``: the batches are split over the processes, the sums and token counts are
summed, and rank 0 writes the file. The prior equals the single-process one up to float
summation order.
"""

from __future__ import annotations

import sys

from .common import add_model_arg


def register(sub) -> None:
    from .. import distributed

    p = sub.add_parser("prior", help="build a global prior for a model", description=__doc__)
    add_model_arg(p)
    p.add_argument("-o", "--output", required=True, help="where to write the prior (.safetensors)")
    p.add_argument("--source", default="self",
                   help="'self' (text the model samples itself, default), a corpus name, or a text/JSONL file")
    p.add_argument("--tokens", type=int, default=16384, help="tokens to accumulate over (default 16384)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sampled sequence or text chunk")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda (each process on cuda:LOCAL_RANK), cuda:K, or auto")
    distributed.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import distributed
    from ..build import build_prior
    from ..models import load_model
    from ..prior import save_prior

    if distributed.should_launch(args.nproc):
        return distributed.launch(args, args.nproc)
    with distributed.init(device=args.device, timeout_s=args.dist_timeout) as ctx:
        with ctx.local_main_first():  # the first load may convert and cache the model
            model, tok = load_model(args.model, dtype=args.dtype, device=str(ctx.device))
        prior = build_prior(model, tok, source=args.source, n_tokens=args.tokens, seq_len=args.seq_len,
                            batch_size=args.batch_size, seed=args.seed, progress=ctx.is_main(),
                            rank=ctx.rank, world=ctx.world, all_sum=ctx.all_sum)
        if ctx.is_main():
            save_prior(prior, args.output)
            procs = f" on {ctx.world} processes" if ctx.world > 1 else ""
            print(f"wrote {args.output}: {prior.sums.shape[0]} layers x {prior.sums.shape[1]} neurons, "
                  f"{prior.n_tokens} tokens from {args.source}{procs}", file=sys.stderr)
    return 0
