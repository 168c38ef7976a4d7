"""Does the decode step care where the compact weights live? One process on huge pages
(``THP_MEM_ALLOC_ENABLE=1``, what importing glass_llm sets), three copies of the model, each with a
GLASS handle kept applied, the same greedy request on each in rotating order:

* ``torch``: the compact buffers as the engine allocates them (huge pages, 2 MB aligned);
* ``numpy4k``: moved to memory the C library allocates (4 KB pages where the kernel's transparent
  huge pages are ``madvise``);
* ``offset``: moved to huge pages at a different offset within 2 MB for every buffer.

    flock /tmp/glass-heavy.lock python benchmarks/buffer_pages.py [--rounds 12] [--tokens 96]

Each later request selects the same neurons again into the same buffers (``sliced._buffer`` reuses
them), so the three differ only in where the weights are. The replies are checked equal. Reports the
median request time per arm and its ratio to ``torch`` (Fieller interval over the rounds); writes
``benchmarks/results/buffer-pages-MODEL.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from glass_llm.bench import machine_info
from glass_llm.build import get_or_build_prior
from glass_llm.engine import GlassConfig, apply_glass
from glass_llm.intervals import paired_ratio
from glass_llm.io import atomic_write
from glass_llm.memory import anon_huge_kb
from glass_llm.models import load_model

ARMS = ("torch", "numpy4k", "offset")


def _moved(t: torch.Tensor, arm: str, i: int) -> torch.Tensor:
    if arm == "numpy4k":
        new = torch.from_numpy(np.empty(tuple(t.shape), dtype=np.float32))
    else:
        off = (i * 1031) % 4096 * 16  # elements: a different offset within 2 MB for every buffer
        new = torch.empty(t.numel() + off, dtype=t.dtype)[off:].view(t.shape)
    return new.copy_(t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    models = {arm: load_model(args.model)[0] for arm in ARMS}
    tok = load_model(args.model)[1]
    prior = get_or_build_prior(models["torch"], tok, args.model)
    ids = tok("The history of the printing press begins in", return_tensors="pt").input_ids
    handles = {arm: apply_glass(models[arm], GlassConfig(density=0.5), prior=prior) for arm in ARMS}

    def request(arm: str) -> torch.Tensor:
        return models[arm].generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)

    for arm in ARMS:
        request(arm)  # the first selection allocates the buffers
    for arm in ARMS[1:]:
        for i, st in enumerate(handles[arm].states):
            if st.weight_in is None or st.weight_in.dtype != torch.float32:
                continue
            st.weight_in = _moved(st.weight_in, arm, 2 * i)
            st.part_weights = tuple(st.weight_in.split(st.part_sizes, dim=-2))
            st.weight_out = _moved(st.weight_out, arm, 2 * i + 1)
    # the kernel's account: KB on huge pages in the mapping of each arm's first compact buffer
    first = {arm: next(st.weight_in for st in handles[arm].states if st.weight_in is not None) for arm in ARMS}
    huge_kb = {arm: anon_huge_kb(t.data_ptr()) for arm, t in first.items()}
    replies = {arm: request(arm) for arm in ARMS}
    if not all(torch.equal(replies[arm], replies["torch"]) for arm in ARMS):
        raise SystemExit("the arms wrote different replies: the moved buffers are not used as the engine's")
    times = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        for arm in ARMS[r % 3:] + ARMS[:r % 3]:
            t0 = time.perf_counter()
            request(arm)
            times[arm].append(time.perf_counter() - t0)
    for handle in handles.values():
        handle.remove()
    ratios = {arm: asdict(paired_ratio(times[arm], times["torch"])) for arm in ARMS[1:]}
    out = {"model": args.model, "tokens": args.tokens, "rounds": args.rounds, "machine": info, "huge_kb_first_buffer": huge_kb,
           "median_ms": {arm: 1e3 * statistics.median(v) for arm, v in times.items()},
           "ratio_to_torch": ratios, "seconds": times}
    path = Path(__file__).resolve().parent / "results" / f"buffer-pages-{args.model}.json"
    atomic_write(path, json.dumps(out, indent=1) + "\n")
    for arm in ARMS[1:]:
        q = ratios[arm]
        print(f"{arm}: {out['median_ms'][arm]:.0f} ms against {out['median_ms']['torch']:.0f} ms, ratio {q['mean']:.4f} "
              f"[{q['low']:.4f}, {q['high']:.4f}]")
    print(f"huge pages: {info['huge_pages']}; KB on huge pages around each arm's first buffer: {huge_kb} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
