"""glass serve MODEL [--host H] [--port P] [--method M] [--density D] [--prior FILE] [--max-batch N] [--loop-guard K]

An OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models,
/health) that decodes with sparse FFNs. Each request may choose its own settings with
an extension field: {"glass": {"method": "griffin", "density": 0.7, "loop_guard": 4}}.
"""

from __future__ import annotations

import logging

from ..errors import UserError
from .common import add_loop_guard_arg, add_model_arg, add_prior_tokens_arg


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API", description=__doc__)
    add_model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--method", default="glass", help="default method: dense, griffin, glass, glass-a, glass-i, ...")
    p.add_argument("--density", type=float, default=0.5, help="default fraction of FFN neurons kept while decoding")
    p.add_argument("--lam", type=float, default=None, help="default weight of the prompt ranking (glass methods)")
    p.add_argument("--prior", default=None, help="prior file (built and cached on first use if omitted)")
    add_prior_tokens_arg(p)
    add_loop_guard_arg(p)
    p.add_argument("--max-batch", type=int, default=8, help="most sequences decoded together (default 8)")
    p.add_argument("--share-batch", action="store_true",
                   help="one neuron set per batch instead of one per request: faster with many clients, for some "
                        "fidelity (BENCHMARKS.md, 'What one set for the batch costs in fidelity')")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="a new batch gathers requests until none arrives for this long, at most 5x (default 10)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens generated when a request does not say")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def _check(args) -> None:
    from ..engine import GlassConfig

    GlassConfig(method=args.method, density=args.density, lam=args.lam, loop_guard=args.loop_guard).resolved()
    for name in ("port", "max_batch", "max_tokens"):
        value = getattr(args, name)
        if value < (0 if name == "port" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.port > 65535:
        raise UserError(f"--port must be at most 65535, got {args.port}")
    if args.batch_wait_ms < 0:
        raise UserError(f"--batch-wait-ms must not be negative, got {args.batch_wait_ms:g}")


def loader(args):
    """What the model thread runs at start: model, tokenizer, prior, context length."""

    def load():
        from ..build import get_or_build_prior
        from ..methods import get_method
        from ..models import load_model
        from ..serve.worker import Loaded

        placement = {name: getattr(args, name) for name in ("device", "device_map") if getattr(args, name, None)}
        model, tok = load_model(args.model, dtype=args.dtype, **placement)
        prior = None
        if args.prior is not None or get_method(args.method).needs_prior_at(args.lam):
            prior = get_or_build_prior(model, tok, args.model, path=args.prior, n_tokens=args.prior_tokens)
        context = getattr(model.config, "max_position_embeddings", None) or getattr(tok, "model_max_length", 2048)
        return Loaded(model=model, tokenizer=tok, prior=prior, context_length=int(context))

    return load


def run(args) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as err:
        raise UserError(f"glass serve needs {err.name}: pip install 'glass-llm[serve]' "
                       "(or the pinned versions in requirements.lock)") from None
    from ..serve.app import ServeSettings
    from ..serve.protocol import GlassSettings
    from ..serve.server import serve

    _check(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    settings = ServeSettings(model_name=args.model, glass=GlassSettings(args.method, args.density, args.lam, args.loop_guard),
                             max_tokens=args.max_tokens)
    worker = serve(loader(args), settings, args.host, args.port, args.max_batch, args.share_batch,
                   batch_wait=args.batch_wait_ms / 1000, log_level=args.log_level)
    if worker.state == "failed":
        raise UserError(worker.error or "loading the model failed")
    return 0
