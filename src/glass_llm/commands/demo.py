"""glass demo: dense, GRIFFIN and GLASS side by side on the default model."""

from __future__ import annotations

import sys
import time

from .common import add_model_arg

DEMO_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def register(sub) -> None:
    p = sub.add_parser("demo", help="compare dense, GRIFFIN and GLASS generations", description=__doc__)
    add_model_arg(p)
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--prior-tokens", type=int, default=8192, help="tokens for the prior built on first use")
    p.set_defaults(func=run)


def _decode_speed(model, enc, config, prior, n):
    """Generate ``n`` tokens greedily and return (ids, decode tokens/s) with prefill excluded."""
    import torch

    from ..engine import apply_glass

    def timed(max_new):
        t0 = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False)
        return out, time.perf_counter() - t0

    with torch.no_grad(), apply_glass(model, config, prior=prior):
        _, t_prefill = timed(1)  # prefill + first token (+ selection)
        out, t_all = timed(n)
    return out, (n - 1) / max(t_all - t_prefill, 1e-9)


def run(args) -> int:
    import torch

    from ..build import get_or_build_prior
    from ..engine import GlassConfig
    from ..metrics import kl_per_token
    from ..models import load_model
    from ..teacher import continuation_logits
    from .generate import encode_prompt

    print(f"loading {args.model} ...", file=sys.stderr)
    model, tok = load_model(args.model, dtype=args.dtype)
    prior = get_or_build_prior(model, tok, args.model, n_tokens=args.prior_tokens)
    enc = encode_prompt(tok, args.prompt, raw=False)
    P = enc["input_ids"].shape[1]
    methods = [("dense", GlassConfig(method="dense")),
               ("griffin", GlassConfig(method="griffin", density=args.density)),
               ("glass", GlassConfig(method="glass", density=args.density))]
    outputs = {}
    for name, cfg in methods:
        out, speed = _decode_speed(model, enc, cfg, prior, args.max_new_tokens)
        outputs[name] = (out[:, P:], speed)
    ref = outputs["dense"][0]
    dense_logits, _ = continuation_logits(model, enc["input_ids"], ref)
    print(f"\nmodel {args.model}, prompt ({P} tokens): {args.prompt!r}")
    print(f"density {args.density:g} (FFN neurons kept while decoding), {args.max_new_tokens} new tokens, greedy\n")
    rows = []
    for name, cfg in methods:
        ids, speed = outputs[name]
        logits, _ = continuation_logits(model, enc["input_ids"], ref, None if cfg.method == "dense" else cfg, prior)
        kl = float(kl_per_token(dense_logits[:, 1:], logits[:, 1:]).mean())
        text = tok.decode(ids[0], skip_special_tokens=True).strip()
        rows.append((name, kl, speed))
        print(f"--- {name} (KL to dense {kl:.3f}, {speed:.1f} tok/s) ---\n{text}\n")
    print(f"{'method':<8} {'KL(dense||m)':>13} {'decode tok/s':>13} {'speed-up':>9}")
    for name, kl, speed in rows:
        print(f"{name:<8} {kl:>13.3f} {speed:>13.1f} {speed / rows[0][2]:>8.2f}x")
    print("\nKL is measured teacher-forced over the dense continuation; lower is closer to the dense model.")
    return 0
