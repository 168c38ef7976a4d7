"""Choose how many of the nearest greedy replies ``glass-neighbours`` adds up, on the calibration split.

    python benchmarks/neighbours_sweep.py --model gemma3-270m [--corpus wikipedia] [--prompts 23]
        [--bank-rows 256] [--ks 32,64,128,all] [--blocks-ks 32,64] [--bank-offset N]

For each prompt of the calibration split (never the reported test split; P = 8, G = 64, the dense
model's greedy continuation), ``glass`` at density 0.5 with the cached default prior is teacher-forced
once with its one prior of greedy text (the base) and once per setting with that prior replaced by the
summed statistic of the K bank replies nearest to the prompt (``neighbours.nearest_sums``; "all": the
whole bank). ``--blocks-ks``: neighbours chosen per block by that block's similarity alone. The bank
is the prior's (``--bank-offset`` 0), or ``--bank-rows`` greedy replies sampled at sequence indices
from ``--bank-offset`` on, as ``greedy_text.greedy_bank`` writes them (cached under runs/). Prints
per setting the mean KL and the geometric mean of the per-prompt ratio to the base (95% t interval).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from calib_case import load_calib_case
from glass_llm.adapters import find_ffn_blocks
from glass_llm.calibrate import ActivationRecorder
from glass_llm.engine import GlassConfig
from glass_llm.intervals import t_quantile
from glass_llm.metrics import kl_per_token
from glass_llm.calibration import token_ids_of
from glass_llm.neighbours import mean_statistic, nearest_sums
from glass_llm.self_sample import sample_and_record
from glass_llm.teacher import continuation_logits


def bank_of(model, model_name: str, prior, offset: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    if offset == 0:
        return prior.calibration.bank_sums, prior.calibration.bank_tokens
    path = Path("runs") / f"bank-{model_name}-{offset}-{rows}.pt"
    if path.exists():
        saved = torch.load(path)
        return saved["sums"], saved["tokens"]
    blocks = find_ffn_blocks(model)
    sums, counts, _ = sample_and_record(model, token_ids_of(model), blocks, list(range(offset, offset + rows)), 136, 0, greedy_after=8)
    keep = counts > 0
    sums, tokens = torch.stack(sums, 1)[keep], counts[keep].float()
    path.parent.mkdir(exist_ok=True)
    torch.save({"sums": sums, "tokens": tokens}, path)
    return sums, tokens


def per_block_nearest(query: torch.Tensor, n: torch.Tensor, sums: torch.Tensor, tokens: torch.Tensor, k: int):
    """(L, d) sums of the k replies nearest in each block by that block's cosine similarity alone."""
    q, b = mean_statistic(query, n)[0], mean_statistic(sums, tokens)
    sim = torch.nn.functional.cosine_similarity(q[None], b, dim=-1)  # (R, L)
    top = sim.topk(k, dim=0).indices
    return torch.stack([sums[top[:, i], i].float().sum(0) for i in range(sums.shape[1])])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--corpus", default="wikipedia")
    p.add_argument("--prompts", type=int, default=23)
    p.add_argument("--bank-offset", type=int, default=0)
    p.add_argument("--bank-rows", type=int, default=256)
    p.add_argument("--ks", default="32,64,128,all")
    p.add_argument("--blocks-ks", default="32,64")
    args = p.parse_args()
    torch.set_num_threads(2)
    case = load_calib_case(args.model, args.corpus, 8, 64, args.prompts)
    model, prior = case.model, case.prior
    sums, tokens = bank_of(model, args.model, prior, args.bank_offset, args.bank_rows)
    blocks = find_ffn_blocks(model)
    rec = ActivationRecorder(model, blocks)
    rec.per_row = True
    with rec:
        rec.run(model, case.prompts, torch.ones_like(case.prompts), logits_to_keep=1)
    query = torch.stack([s.cpu() for s in rec.take_row_sums()], 1)  # (N, L, d)
    n = torch.full((len(query),), float(case.prompts.shape[1]))
    settings = [("base", None, None)]
    settings += [(f"K={k}", "all", len(sums) if k == "all" else int(k)) for k in args.ks.split(",") if k]
    settings += [(f"K={k} per block", "block", int(k)) for k in args.blocks_ks.split(",") if k]
    kl = {name: [] for name, _, _ in settings}
    config = GlassConfig(method="glass", density=0.5)
    for i in range(len(query)):
        for name, how, k in settings:
            pr = prior
            if how is not None:
                near = (nearest_sums(query[i:i + 1], n[i:i + 1], sums, tokens, k)[0] if how == "all"
                        else per_block_nearest(query[i:i + 1], n[i:i + 1], sums, tokens, k))
                pr = replace(prior, calibration=replace(prior.calibration, greedy_sums=near))
            logits, _ = continuation_logits(model, case.prompts[i:i + 1], case.refs[i:i + 1], config, pr)
            kl[name].append(float(kl_per_token(case.dense[i:i + 1, 1:], logits[:, 1:]).mean()))
    base = torch.tensor(kl["base"])
    print(f"{args.model}, {args.corpus} calibration split, {len(base)} prompts of 8 tokens, G = 64, bank of "
          f"{len(sums)} replies ({'the prior' if args.bank_offset == 0 else f'offset {args.bank_offset}'})")
    for name, _, _ in settings:
        v = torch.tensor(kl[name])
        d = (v / base).log()
        h = t_quantile(0.975, len(d) - 1) * d.std() / len(d) ** 0.5
        print(f"{name:>18}  KL {v.mean():.4f}  ratio {d.mean().exp():.3f} [{(d.mean() - h).exp():.3f}, "
              f"{(d.mean() + h).exp():.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
