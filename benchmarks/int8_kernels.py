"""Time one decode-step matmul (batch 1) per weight format on this machine.

    python benchmarks/int8_kernels.py [--threads N] [--repeats 200]

Compares float32 and bfloat16 ``F.linear`` with torch's int8 weight-only kernel
(``torch._weight_int8pack_mm``, per-output-channel scales) on the matrix shapes of
SmolLM2-135M (d_model 576, d_ff 1536, vocabulary 49152) and Gemma-3-270m (d_ff 2048).
Prints microseconds per call; the fastest format is the one worth slicing.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

SHAPES = [(1536, 576), (576, 1536), (3072, 576), (2048, 640), (640, 2048), (49152, 576)]


def per_call_us(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for n, k in SHAPES:
        x = torch.randn(1, k)
        w = torch.randn(n, k)
        scale = w.abs().amax(1) / 127
        w8 = torch.round(w / scale[:, None]).to(torch.int8)
        wb, xb = w.bfloat16(), x.bfloat16()
        row = {"out": n, "in": k,
               "float32_us": per_call_us(lambda: F.linear(x, w), args.repeats),
               "bfloat16_us": per_call_us(lambda: F.linear(xb, wb), args.repeats),
               "int8_us": per_call_us(lambda: torch._weight_int8pack_mm(x, w8, scale), args.repeats)}
        rows.append(row)
        print(f"{n:>6} x {k:<5} float32 {row['float32_us']:9.1f} us   bfloat16 {row['bfloat16_us']:9.1f} us   "
              f"int8 {row['int8_us']:9.1f} us", flush=True)
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
