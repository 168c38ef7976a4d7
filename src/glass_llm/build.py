"""Build a global prior from text the model writes itself, or from a text corpus.

Self-sampling (the default, docs/method.md section 3): sequences are sampled at temperature 1
from the full distribution, starting at BOS and, for chat models, also from an empty
user turn. Batch ``i`` is seeded with ``seed + i``, so the sequences depend on the
batch index only: a run split over several processes samples the same text, and the
set of batches read depends on the seed and the token budget only (see
``build_self_prior_sums``), so 1 and N processes build the same prior up to float
summation order.
The statistic is accumulated over the generated tokens (up to and including EOS).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import find_ffn_blocks
from .calibrate import ActivationRecorder
from .prior import Prior, prior_from_sums


def _self_prompts(tokenizer, chat_turn: bool) -> list[int]:
    if chat_turn and getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True,
                                            return_dict=True)
        return list(enc["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id
    return [bos]


def _generated_mask(seqs: torch.Tensor, prompt_len: int, eos_ids: set[int]) -> torch.Tensor:
    mask = torch.zeros_like(seqs)
    for r in range(seqs.shape[0]):
        for t in range(prompt_len, seqs.shape[1]):
            mask[r, t] = 1
            if int(seqs[r, t]) in eos_ids:
                break
    return mask


@torch.no_grad()
def sample_batch(model: nn.Module, tokenizer, index: int, seq_len: int, batch_size: int, seed: int):
    """Sample one batch of sequences (chat turn on odd batches for chat models)."""
    prompt = _self_prompts(tokenizer, chat_turn=index % 2 == 1)
    ids = torch.tensor([prompt] * batch_size, device=model.device)
    torch.manual_seed(seed + index)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                          top_p=1.0, max_new_tokens=seq_len, min_new_tokens=1, pad_token_id=pad)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return seqs, _generated_mask(seqs.cpu(), len(prompt), eos_ids).to(seqs.device)


def batch_indices(n_batches: int, rank: int = 0, world: int = 1) -> list[int]:
    """The batches this process handles: a deterministic round-robin split."""
    return list(range(rank, n_batches, world))


def batches_needed(counts: list[int], n_tokens: int) -> int | None:
    """The number of batches ``B`` to read: the smallest ``B`` such that batches
    ``0 .. B-1`` hold at least ``n_tokens`` tokens, given the token counts of batches
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


@torch.no_grad()
def build_self_prior_sums(model, tokenizer, n_tokens: int = 16384, seq_len: int = 128, batch_size: int = 16,
                          seed: int = 0, rank: int = 0, world: int = 1, progress: bool = True,
                          all_sum: AllSum = _identity) -> tuple[list[torch.Tensor], int, int]:
    """Sample batches and accumulate the statistic until ``n_tokens`` generated tokens.

    Which batches enter the prior depends on the seed and ``n_tokens`` only, not on the
    number of processes: batches ``0 .. B-1``, with ``B`` the first count whose batches
    hold ``n_tokens`` tokens (:func:`batches_needed`). Work runs in rounds of ``world``
    batches (batch ``round * world + rank`` on this process); ``all_sum`` sums a tensor
    over all processes (identity for one process) and shares the token count of every
    batch of the round, so every process knows ``B`` as soon as it is reached and all stop
    after the same round. A batch of that last round with index ``>= B`` is dropped.

    Each batch's statistic is computed on its own in float32 (the same numbers on any
    process) and added into float64 totals, so the split over processes changes the
    result only by float64 rounding.

    Returns ``(sums, tokens, n_batches)``: this process's per-block float64 sums over
    its batches, its token count (sum both over processes for the prior) and ``B``.
    """
    blocks = find_ffn_blocks(model)
    totals = [torch.zeros(b.d_ff, dtype=torch.float64) for b in blocks]
    counts: list[int] = []  # generated tokens of batch 0, 1, 2, ... (the same on every process)
    mine = 0
    n_batches: int | None = None
    bar = tqdm(total=n_tokens, desc="sampling prior text", unit="tok", disable=not progress)
    rnd = 0
    while n_batches is None:
        index = rnd * world + rank
        seqs, mask = sample_batch(model, tokenizer, index, seq_len, batch_size, seed)
        rec = ActivationRecorder(model, blocks)
        with rec:
            rec.run(model, seqs, mask, attention_mask=torch.ones_like(seqs))
        round_counts = torch.zeros(world, dtype=torch.int64)
        round_counts[rank] = rec.tokens
        round_counts = all_sum(round_counts)
        before = sum(counts)
        counts.extend(int(c) for c in round_counts)
        n_batches = batches_needed(counts, n_tokens)
        if n_batches is None or index < n_batches:
            _add_into(totals, rec.sums)
            mine += rec.tokens
        bar.update(min(sum(counts), n_tokens) - min(before, n_tokens))
        rnd += 1
    bar.close()
    return totals, mine, n_batches


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
def build_text_prior_sums(model, tokenizer, texts: list[str], n_tokens: int = 16384, seq_len: int = 128,
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


def build_prior(model: nn.Module, tokenizer, source: str = "self", n_tokens: int = 16384, seq_len: int = 128,
                batch_size: int = 16, seed: int = 0, progress: bool = True, rank: int = 0, world: int = 1,
                all_sum: AllSum = _identity) -> Prior:
    """Build a prior. ``source`` is "self", a corpus name or a text file.

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
        sums, count, n_batches = build_self_prior_sums(model, tokenizer, n_tokens, seq_len, batch_size, seed,
                                                       rank=rank, world=world, progress=progress, all_sum=all_sum)
        info = {"kind": "self", "seq_len": seq_len, "batch_size": batch_size, "seed": seed, "temperature": 1.0,
                "requested_tokens": n_tokens, "batches": n_batches}
    else:
        from .corpora import load_texts

        texts = load_texts(source)
        sums, count, n_batches = build_text_prior_sums(model, tokenizer, texts, n_tokens, seq_len, batch_size,
                                                       rank=rank, world=world, progress=progress)
        info = {"kind": "text", "name": str(source), "seq_len": seq_len, "requested_tokens": n_tokens,
                "batches": n_batches}
    table = all_sum(torch.stack(sums))
    count = int(all_sum(torch.tensor([count], dtype=torch.int64))[0])
    return prior_from_sums(model, list(table), count, info)


def get_or_build_prior(model: nn.Module, tokenizer, model_name: str, source: str = "self", n_tokens: int = 16384,
                       path=None, progress: bool = True, seed: int = 0, rank: int = 0, world: int = 1,
                       all_sum: AllSum = _identity) -> Prior:
    """Load the prior at ``path`` (which must exist), or else the cached prior for
    ``model_name``, building and caching that one first if it does not exist yet.

    On several processes (``rank``, ``world``, ``all_sum`` as for :func:`build_prior`)
    every process calls this: the prior is loaded when every process sees the file, and
    otherwise built by all of them together and written by rank 0.
    """
    from pathlib import Path

    from .commands.common import default_prior_path
    from .prior import load_prior, save_prior

    if path is not None:  # a file the user named: never built silently in its place
        prior = load_prior(path)
        prior.check_matches(model)
        return prior
    path = default_prior_path(model_name, source, n_tokens)
    have = int(all_sum(torch.tensor([int(Path(path).is_file())], dtype=torch.int64))[0])
    if have == world:
        prior = load_prior(path)
        prior.check_matches(model)
        return prior
    prior = build_prior(model, tokenizer, source=source, n_tokens=n_tokens, seed=seed, progress=progress and rank == 0,
                        rank=rank, world=world, all_sum=all_sum)
    if rank == 0:
        save_prior(prior, path)
    return prior
