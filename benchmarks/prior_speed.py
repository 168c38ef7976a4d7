"""Prior sampling throughput against single-stream greedy decode, measured in one run.

    python benchmarks/prior_speed.py --model smollm2-135m --shapes 32x128,64x128,128x128,64x256

Every round times one single-stream greedy decode (``glass_llm.bench.timed_generate``,
decode tokens/s with prefill excluded) and then one batch of self-sampled prior text per
shape (BATCHxSEQ_LEN: sequences per forward x new tokens per sequence, statistic recorded
in the same forwards), each round on new sequences. The ratio prior tokens/s / decode
tokens/s is taken within each round; the JSON reports its median and range over rounds.
With ``--default-build`` it also times one full ``build_prior`` at the library defaults.
Writes benchmarks/results/prior_speed-MODEL.json (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _shape(text: str) -> tuple[int, int]:
    try:
        b, s = text.lower().split("x")
        return int(b), int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxSEQ_LEN such as 64x128, got {text!r}") from None


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--shapes", type=lambda t: [_shape(x) for x in t.split(",") if x.strip()],
                    default=[(32, 128), (64, 128), (128, 128), (64, 256)])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--default-build", action="store_true", help="also time build_prior at the defaults")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/prior_speed-MODEL.json)")
    args = ap.parse_args()

    import torch

    from glass_llm import load_model
    from glass_llm.adapters import find_ffn_blocks
    from glass_llm.bench import machine_info, make_prompts, timed_generate
    from glass_llm.build import build_prior
    from glass_llm.prior_cache import DEFAULT_PRIOR_TOKENS, DEFAULT_SAMPLE_BATCH, DEFAULT_SAMPLE_LEN
    from glass_llm.self_sample import sample_and_record

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    blocks = find_ffn_blocks(model)
    ids = make_prompts(tok, 1, 16)
    gen = {"pad_token_id": tok.pad_token_id}
    timed_generate(model, ids, 8, "warm-up", generate_kwargs=gen)
    rounds = []
    next_seq = 10_000  # sequence indices unused by a default prior
    for rnd in range(args.rounds):
        run = timed_generate(model, ids, args.decode_tokens, "dense", generate_kwargs=gen)
        decode = run.steps / run.decode_s
        row = {"decode_tok_s": decode, "shapes": {}}
        print(f"round {rnd + 1}: single-stream decode {decode:.1f} tok/s", file=sys.stderr, flush=True)
        for batch, seq_len in args.shapes:
            t0 = time.perf_counter()
            _, counts, _ = sample_and_record(model, tok, blocks, list(range(next_seq, next_seq + batch)), seq_len, 0)
            dt = time.perf_counter() - t0
            next_seq += batch
            rate = float(counts.sum()) / dt
            row["shapes"][f"{batch}x{seq_len}"] = {"tok_s": rate, "ratio": rate / decode, "tokens": int(counts.sum())}
            print(f"  {batch}x{seq_len}: {rate:.1f} tok/s = {rate / decode:.1f}x decode", file=sys.stderr, flush=True)
        rounds.append(row)
    result = {"model": args.model, "machine": machine_info(), "decode_tokens": args.decode_tokens,
              "decode_tok_s": _spread([r["decode_tok_s"] for r in rounds]), "shapes": {}, "rounds": rounds}
    for batch, seq_len in args.shapes:
        key = f"{batch}x{seq_len}"
        result["shapes"][key] = {"tok_s": _spread([r["shapes"][key]["tok_s"] for r in rounds]),
                                 "ratio": _spread([r["shapes"][key]["ratio"] for r in rounds])}
    if args.default_build:
        before = timed_generate(model, ids, args.decode_tokens, "dense", generate_kwargs=gen)
        t0 = time.perf_counter()
        prior = build_prior(model, tok, progress=False)
        dt = time.perf_counter() - t0
        after = timed_generate(model, ids, args.decode_tokens, "dense", generate_kwargs=gen)
        decode = statistics.mean([before.steps / before.decode_s, after.steps / after.decode_s])
        result["default_build"] = {"tokens": prior.n_tokens, "requested": DEFAULT_PRIOR_TOKENS,
                                   "batch": DEFAULT_SAMPLE_BATCH, "seq_len": DEFAULT_SAMPLE_LEN, "seconds": dt,
                                   "tok_s": prior.n_tokens / dt, "decode_tok_s": decode,
                                   "ratio": prior.n_tokens / dt / decode}
        print(f"default build: {prior.n_tokens} tokens in {dt:.1f} s = {prior.n_tokens / dt:.1f} tok/s "
              f"({prior.n_tokens / dt / decode:.1f}x decode)", file=sys.stderr)
    out = Path(args.out or Path(__file__).parent / "results" / f"prior_speed-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
