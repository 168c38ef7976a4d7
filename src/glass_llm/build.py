"""Build a global prior from text the model writes itself, or from a text corpus.

Self-sampling (the default, docs/method.md section 3): sequences are sampled at temperature 1
from the full distribution, starting at BOS and, for chat models, also from an empty
user turn, and the statistic is recorded in the same forwards that sample them
(``self_sample``). Sequence ``i`` depends on the seed and ``i`` only, and the sequences
that enter the prior are ``0 .. S-1`` with ``S`` set by the token budget (see
``build_self_prior_sums``): 1 and N processes, and any batch size, build the same prior
up to float rounding.
The statistic is accumulated over the generated tokens (up to and including EOS).
"""

from __future__ import annotations

import io
import math
import sys
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import find_ffn_blocks
from .calibrate import ActivationRecorder
from .prior import Prior, prior_from_sums
from .prior_cache import DEFAULT_PRIOR_SOURCE, DEFAULT_PRIOR_TOKENS, DEFAULT_SAMPLE_BATCH, DEFAULT_SAMPLE_LEN
from .self_sample import sample_and_record


def batch_indices(n_batches: int, rank: int = 0, world: int = 1) -> list[int]:
    """The batches this process handles: a deterministic round-robin split."""
    return list(range(rank, n_batches, world))


def batches_needed(counts: list[int], n_tokens: int) -> int | None:
    """The number of items ``B`` to read: the smallest ``B`` such that items
    ``0 .. B-1`` hold at least ``n_tokens`` tokens, given the token counts of items
    ``0, 1, 2, ...`` (in index order); ``None`` when ``counts`` does not reach it yet."""
    total = 0
    for i, c in enumerate(counts):
        total += c
        if total >= n_tokens:
            return i + 1
    return None


def _add_into(totals: list[torch.Tensor], sums: list[torch.Tensor]) -> None:
    for t, s in zip(totals, sums):
        t += s.to(device=t.device, dtype=t.dtype)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


AllSum = Callable[[torch.Tensor], torch.Tensor]


def sampling_batch(n_tokens: int, seq_len: int, batch_size: int) -> int:
    """Sequences per forward: ``batch_size``, but no more than one full batch of
    ``seq_len`` tokens per sequence needs for ``n_tokens`` (so a small prior does not
    sample a large batch it cannot use). Independent of the number of processes."""
    return max(1, min(batch_size, -(-n_tokens // seq_len)))


@torch.no_grad()
def build_self_prior_sums(model, tokenizer, n_tokens: int = DEFAULT_PRIOR_TOKENS, seq_len: int = DEFAULT_SAMPLE_LEN,
                          batch_size: int = DEFAULT_SAMPLE_BATCH, seed: int = 0, rank: int = 0, world: int = 1,
                          progress: bool = True, all_sum: AllSum = _identity) -> tuple[list[torch.Tensor], int, int]:
    """Sample sequences and accumulate the statistic until ``n_tokens`` generated tokens.

    Which sequences enter the prior depends on the seed and ``n_tokens`` only, not on
    the batch size or the number of processes: sequences ``0 .. S-1``, with ``S`` the
    first count whose sequences hold ``n_tokens`` tokens (:func:`batches_needed`). Work
    runs in rounds of ``world`` batches (sequences ``(round * world + rank) * batch_size``
    onwards on this process); ``all_sum`` sums a tensor over all processes (identity
    for one process) and shares the token count of every sequence of the round, so every
    process knows ``S`` as soon as it is reached and all stop after the same round.
    Sequences of that last round with index ``>= S`` are dropped.

    Each sequence's statistic is summed in float32 on its own row and added into float64
    totals in index order, so the split changes the result only by float rounding.

    Returns ``(sums, tokens, S)``: this process's per-block float64 sums over its
    sequences, its token count (sum both over processes for the prior) and ``S``.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    batch_size = sampling_batch(n_tokens, seq_len, batch_size)
    blocks = find_ffn_blocks(model)
    totals = [torch.zeros(b.d_ff, dtype=torch.float64) for b in blocks]
    counts: list[int] = []  # generated tokens of sequence 0, 1, 2, ... (the same on every process)
    mine = 0
    n_seqs: int | None = None
    bar = tqdm(total=n_tokens, desc="sampling prior text", unit="tok", disable=not progress)
    rnd = 0
    while n_seqs is None:
        first = (rnd * world + rank) * batch_size
        indices = list(range(first, first + batch_size))
        sums, row_counts, _ = sample_and_record(model, tokenizer, blocks, indices, seq_len, seed)
        round_counts = torch.zeros(world * batch_size, dtype=torch.int64)
        round_counts[rank * batch_size:(rank + 1) * batch_size] = row_counts
        round_counts = all_sum(round_counts)
        before = sum(counts)
        counts.extend(int(c) for c in round_counts)
        n_seqs = batches_needed(counts, n_tokens)
        for r, i in enumerate(indices):
            if n_seqs is None or i < n_seqs:
                _add_into(totals, [s[r] for s in sums])
                mine += int(row_counts[r])
        bar.update(min(sum(counts), n_tokens) - min(before, n_tokens))
        rnd += 1
    bar.close()
    return totals, mine, n_seqs


def text_batches(tokenizer, texts: list[str], n_tokens: int, seq_len: int, batch_size: int) -> list[list[list[int]]]:
    """Cut the documents into chunks of ``seq_len`` tokens (dropping chunks under 8
    tokens) until ``n_tokens`` tokens, and group them into batches: a plan that every
    process computes identically."""
    chunks: list[list[int]] = []
    total = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), seq_len):
            piece = ids[s:s + seq_len]
            if len(piece) < 8:
                continue
            chunks.append(piece)
            total += len(piece)
            if total >= n_tokens:
                break
        if total >= n_tokens:
            break
    if not chunks:
        raise ValueError("the text source gave no usable text (need at least 8 tokens per chunk)")
    return [chunks[i:i + batch_size] for i in range(0, len(chunks), batch_size)]


@torch.no_grad()
def build_text_prior_sums(model, tokenizer, texts: list[str], n_tokens: int = DEFAULT_PRIOR_TOKENS, seq_len: int = 128,
                          batch_size: int = 16, rank: int = 0, world: int = 1,
                          progress: bool = True) -> tuple[list[torch.Tensor], int, int]:
    """Accumulate the statistic over text: this process reads batches ``rank, rank +
    world, ...`` of :func:`text_batches`. Returns ``(sums, tokens, n_batches)`` like
    :func:`build_self_prior_sums` (float64 sums and token count of this process)."""
    blocks = find_ffn_blocks(model)
    batches = text_batches(tokenizer, texts, n_tokens, seq_len, batch_size)
    totals = [torch.zeros(b.d_ff, dtype=torch.float64) for b in blocks]
    mine = 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for i in tqdm(batch_indices(len(batches), rank, world), desc="reading prior text", unit="batch",
                  disable=not progress):
        rows = batches[i]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, piece in enumerate(rows):
            ids[r, :len(piece)] = torch.tensor(piece)
            mask[r, :len(piece)] = 1
        rec = ActivationRecorder(model, blocks)
        with rec:
            rec.run(model, ids.to(model.device), mask.to(model.device))
        _add_into(totals, rec.sums)
        mine += rec.tokens
    return totals, mine, len(batches)


def build_prior(model: nn.Module, tokenizer, source: str = DEFAULT_PRIOR_SOURCE, n_tokens: int = DEFAULT_PRIOR_TOKENS,
                seq_len: int | None = None, batch_size: int | None = None, seed: int = 0, progress: bool = True,
                rank: int = 0, world: int = 1, all_sum: AllSum = _identity) -> Prior:
    """Build a prior. ``source`` is "self", a corpus name or a text file.

    ``seq_len``/``batch_size`` default to the sampling shape of ``prior_cache`` for
    "self" and to 128-token chunks in batches of 16 for text.
    On several processes pass this process's ``rank``, the ``world`` size and an
    ``all_sum`` that sums a tensor over all processes (see ``glass_llm.distributed``):
    the work is split, sums and token counts are summed, and every process returns the
    same prior, equal to the single-process one up to float summation order.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world} processes")
    if source == "self":
        seq_len = DEFAULT_SAMPLE_LEN if seq_len is None else seq_len
        batch_size = sampling_batch(n_tokens, seq_len, DEFAULT_SAMPLE_BATCH if batch_size is None else batch_size)
        sums, count, n_seqs = build_self_prior_sums(model, tokenizer, n_tokens, seq_len, batch_size, seed,
                                                    rank=rank, world=world, progress=progress, all_sum=all_sum)
        info = {"kind": "self", "seq_len": seq_len, "batch_size": batch_size, "seed": seed, "temperature": 1.0,
                "requested_tokens": n_tokens, "sequences": n_seqs, "batches": math.ceil(n_seqs / batch_size),
                "sampler": "inverse-cdf-per-sequence"}
    else:
        from .corpora import load_texts

        seq_len = 128 if seq_len is None else seq_len
        batch_size = 16 if batch_size is None else batch_size
        texts = load_texts(source)
        sums, count, n_batches = build_text_prior_sums(model, tokenizer, texts, n_tokens, seq_len, batch_size,
                                                       rank=rank, world=world, progress=progress)
        info = {"kind": "text", "name": str(source), "seq_len": seq_len, "requested_tokens": n_tokens,
                "batches": n_batches}
    table = all_sum(torch.stack(sums))
    count = int(all_sum(torch.tensor([count], dtype=torch.int64))[0])
    return prior_from_sums(model, list(table), count, info)


def get_or_build_prior(model: nn.Module, tokenizer, model_name: str, source: str = DEFAULT_PRIOR_SOURCE,
                       n_tokens: int | None = None, path=None, progress: bool = True, seed: int = 0, rank: int = 0,
                       world: int = 1, all_sum: AllSum = _identity, calibrate: bool = True) -> Prior:
    """Load the prior at ``path`` (which must exist), or else the cached prior of
    ``model_name`` from ``source`` with at least ``n_tokens`` tokens (default
    :data:`~glass_llm.prior_cache.DEFAULT_PRIOR_TOKENS`), building and caching one first
    if there is none. With ``calibrate`` a cached prior carries the selection calibration
    of the ``glass`` method (``glass_llm.calibration``): computed once, when the prior is
    built or first loaded without one, and stored with it, so no later command redoes it.

    On several processes (``rank``, ``world``, ``all_sum`` as for :func:`build_prior`)
    every process calls this: the prior is loaded when every process sees the file, and
    otherwise built by all of them together and written by rank 0.
    """
    from .prior import load_prior, save_prior
    from .prior_cache import build_notice, default_prior_path, find_cached_prior, record_rate

    if path is not None:  # a file the user named: never built silently in its place
        prior = load_prior(path)
        prior.check_matches(model)
        return prior
    n_tokens = DEFAULT_PRIOR_TOKENS if n_tokens is None else int(n_tokens)
    found = find_cached_prior(model_name, source, n_tokens)
    have = int(all_sum(torch.tensor([int(found is not None)], dtype=torch.int64))[0])
    if have == world:
        prior = load_prior(found)
        prior.check_matches(model)
        cal = prior.calibration
        if calibrate and (cal is None or not cal.complete or cal.short_lam is None or cal.reply_loss is None
                          or cal.bank_sums is None or cal.neighbours_check is None):
            if cal is None:
                prior = calibrated(model, tokenizer, prior, seed, progress and rank == 0)
            else:  # formats 2-8: greedy text's statistic, the short-prompt lam, the reply schedule, bank or check is missing
                from .calibration import ensure_calibrated, with_bank
                from .lam_choice import check_short_lam
                from .neighbours_check import check_neighbours
                from .reply_schedule import check_reply_schedule

                stream = sys.stderr if rank == 0 else io.StringIO()
                prior = ensure_calibrated(model, tokenizer, prior, stream=stream)
                lam_checked = prior.calibration.short_lam is None
                if lam_checked:
                    print("checking the glass method's short-prompt lam on the model's own text (once per prior) ...",
                          file=stream, flush=True)
                    prior = check_short_lam(model, tokenizer, prior)
                if lam_checked or prior.calibration.reply_loss is None:  # measured with glass at the checked lam
                    print("measuring each block's loss on the model's greedy replies (once per prior) ...",
                          file=stream, flush=True)
                    prior = check_reply_schedule(model, tokenizer, prior)
                if prior.calibration.bank_sums is None:
                    print("writing greedy replies kept one by one, the global view of glass-neighbours (once per "
                          "prior) ...", file=stream, flush=True)
                    prior = with_bank(model, tokenizer, prior)
                if prior.calibration.neighbours_check is None:
                    print("checking the glass method's nearest greedy replies on the model's own text (once per prior) "
                          "...", file=stream, flush=True)
                    prior = check_neighbours(model, tokenizer, prior)
            if rank == 0:
                save_prior(prior, found)
        return prior
    if rank == 0:
        print(build_notice(model_name, source, n_tokens), file=sys.stderr, flush=True)
    start = time.perf_counter()
    prior = build_prior(model, tokenizer, source=source, n_tokens=n_tokens, seed=seed, progress=progress and rank == 0,
                        rank=rank, world=world, all_sum=all_sum)
    sampled = time.perf_counter()
    if calibrate:
        prior = calibrated(model, tokenizer, prior, seed, progress and rank == 0)
    if rank == 0:
        save_prior(prior, default_prior_path(model_name, source, n_tokens))
        if source == DEFAULT_PRIOR_SOURCE and world == 1:
            record_rate(model_name, prior.n_tokens / max(sampled - start, 1e-9),
                        time.perf_counter() - sampled if calibrate else None)
    return prior


def calibrated(model: nn.Module, tokenizer, prior: Prior, seed: int = 0, progress: bool = True) -> Prior:
    """``prior`` with the ``glass`` method's selection calibration, its short-prompt lam check, the
    schedule of greedy replies, the bank of greedy replies and its check, and the activation covariance of
    greedy replies (``glass-linear``) included (the same on every process)."""
    from .calibration import calibrate_prior, with_bank
    from .covariance import with_covariance
    from .greedy_text import shared_replies
    from .lam_choice import check_short_lam
    from .neighbours_check import check_neighbours
    from .reply_schedule import check_reply_schedule

    steps = (("the selection statistics", lambda p: calibrate_prior(model, tokenizer, p, seed=seed, progress=progress)),
             ("the short-prompt lam check", lambda p: check_short_lam(model, tokenizer, p)),
             ("each block's loss on greedy replies", lambda p: check_reply_schedule(model, tokenizer, p)),
             ("the bank of greedy replies", lambda p: with_bank(model, tokenizer, p)),
             ("the nearest-replies check", lambda p: check_neighbours(model, tokenizer, p)),
             ("the activation covariance of greedy replies", lambda p: with_covariance(model, tokenizer, p)))
    if progress:
        print("calibrating the glass selection on the model's own samples (once per prior; "
              f"{len(steps)} steps, the longest part of a build) ...", file=sys.stderr, flush=True)
    took = []
    with shared_replies():  # the bank and the covariance read the same greedy replies, written once
        for i, (what, step) in enumerate(steps, 1):
            if progress:
                print(f"calibration {i}/{len(steps)}: {what} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            prior = step(prior)
            took.append(time.perf_counter() - start)
    if progress:
        print(f"calibration took {sum(took):.0f} s ({', '.join(f'{t:.0f}' for t in took)} s by step)",
              file=sys.stderr, flush=True)
    return prior
