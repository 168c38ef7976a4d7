"""glass prior MODEL -o FILE [--source self|CORPUS|FILE] [--tokens N]"""

from __future__ import annotations

import sys

from .common import add_model_arg


def register(sub) -> None:
    p = sub.add_parser("prior", help="build a global prior for a model", description=__doc__)
    add_model_arg(p)
    p.add_argument("-o", "--output", required=True, help="where to write the prior (.safetensors)")
    p.add_argument("--source", default="self",
                   help="'self' (text the model samples itself, default), a corpus name, or a text/JSONL file")
    p.add_argument("--tokens", type=int, default=16384, help="tokens to accumulate over (default 16384)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sampled sequence or text chunk")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..build import build_prior
    from ..models import load_model
    from ..prior import save_prior

    model, tok = load_model(args.model, dtype=args.dtype)
    prior = build_prior(model, tok, source=args.source, n_tokens=args.tokens, seq_len=args.seq_len,
                        batch_size=args.batch_size, seed=args.seed)
    save_prior(prior, args.output)
    print(f"wrote {args.output}: {prior.sums.shape[0]} layers x {prior.sums.shape[1]} neurons, "
          f"{prior.n_tokens} tokens from {args.source}", file=sys.stderr)
    return 0
