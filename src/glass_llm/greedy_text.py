"""Text the model writes greedily, and what the calibration records of it (step 5 of
``calibration``): the statistic that is the global view of ``glass`` and ``glass-greedy`` and the mean
raw activation that the compensated methods add back for the neurons they leave out.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .adapters import FFNBlock
from .calibrate import ActivationRecorder
from .self_sample import sample_and_record, self_prompts

GREEDY_OFFSET = 2 << 20  # sequence indices of the greedy statistic: other sequences than the calibration's
# replies written once and reused inside ``shared_replies`` (None outside it): the bank and the covariance
# steps of a build write the same 256 replies
_SHARED: dict | None = None


@contextmanager
def shared_replies() -> Iterator[None]:
    """Within this block, ``greedy_replies`` writes each set of replies (model, seed, rows, prefix,
    length) once and returns the same tensors to later calls, which only read them; nothing is kept
    after it."""
    global _SHARED
    outer, _SHARED = _SHARED, ({} if _SHARED is None else _SHARED)
    try:
        yield
    finally:
        _SHARED = outer


@torch.no_grad()
def greedy_statistic(model: nn.Module, tokenizer, blocks: list[FFNBlock], seed: int = 0, rows: int = 64,
                     prefix: int = 8, length: int = 128) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Text the model writes greedily: ``rows`` sequences sampled for ``prefix`` tokens at
    temperature 1, then continued greedily for ``length`` tokens (only those are counted).

    Returns the (n_blocks, d_ff) sums of ``u^2`` over the greedy tokens, their count, and
    the (n_blocks, d_ff) mean raw activation ``z`` over the same tokens (one teacher-forced
    pass over the written text; the mean output of the neurons a selection leaves out,
    ``compensation``, is computed from it)."""
    indices, sums, counts, tokens = greedy_replies(model, tokenizer, blocks, seed, rows, prefix, length,
                                                   "the greedy statistic")
    n = int(counts.sum())
    if n == 0:
        raise ValueError("every greedy sequence wrote EOS within its sampled start, so no greedy text was "
                         "recorded; raise greedy_rows")
    signed = _signed_sums(model, tokenizer, blocks, indices, tokens, counts, prefix)
    return torch.stack([s.sum(0) for s in sums]), n, signed / n


def greedy_replies(model: nn.Module, tokenizer, blocks: list[FFNBlock], seed: int, rows: int, prefix: int,
                   length: int, what: str) -> tuple[list[int], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The ``rows`` greedy replies of the bank (``prefix`` sampled tokens, then ``length`` greedy ones):
    their self-prompt indices and ``sample_and_record``'s (sums, counts, tokens); ``what`` names the
    stage in the error for bad settings."""
    if rows < 1 or prefix < 1 or length < 1:
        raise ValueError(f"{what} needs rows, prefix and length >= 1, got {rows}, {prefix}, {length}")
    key = (id(model), len(blocks), seed, rows, prefix, length)
    if _SHARED is not None and key in _SHARED:
        return _SHARED[key]
    indices = list(range(GREEDY_OFFSET, GREEDY_OFFSET + rows))
    out = (indices, *sample_and_record(model, tokenizer, blocks, indices, prefix + length, seed, greedy_after=prefix))
    if _SHARED is not None:
        _SHARED[key] = out
    return out


def _padded_chunks(tokenizer, indices: list[int], tokens: torch.Tensor, counts: torch.Tensor, prefix: int,
                   chunk: int = 16):
    """Each row of ``sample_and_record(..., greedy_after=prefix)`` again, prompt and written tokens,
    right-padded in chunks of ``chunk`` rows: yields ``(ids, attention_mask, where)``, ``where``
    marking the positions of each row's ``counts[r]`` greedy tokens."""
    prompts = self_prompts(tokenizer)
    seqs = [prompts[i % len(prompts)] + tokens[r, : prefix + int(counts[r])].tolist() for r, i in enumerate(indices)]
    starts = [len(prompts[i % len(prompts)]) + prefix for i in indices]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for lo in range(0, len(seqs), chunk):
        part = range(lo, min(len(seqs), lo + chunk))
        width = max(len(seqs[r]) for r in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        where = torch.zeros_like(ids)
        for j, r in enumerate(part):
            ids[j, : len(seqs[r])] = torch.tensor(seqs[r])
            attn[j, : len(seqs[r])] = 1
            where[j, starts[r]: len(seqs[r])] = 1
        yield ids, attn, where


def _signed_sums(model: nn.Module, tokenizer, blocks: list[FFNBlock], indices: list[int], tokens: torch.Tensor,
                 counts: torch.Tensor, prefix: int) -> torch.Tensor:
    """(n_blocks, d_ff) sums of the raw activations over the recorded tokens of
    ``sample_and_record(..., greedy_after=prefix)``: each row's prompt and written tokens
    go through the dense model again, and the positions of its greedy tokens are summed."""
    device = next(model.parameters()).device
    total = torch.zeros(len(blocks), blocks[0].d_ff)
    for ids, attn, where in _padded_chunks(tokenizer, indices, tokens, counts, prefix):
        rec = ActivationRecorder(model, blocks)
        rec.signed = True
        with rec:
            rec.run(model, ids.to(device), where.to(device), attention_mask=attn.to(device), use_cache=False,
                    logits_to_keep=1)
        total += torch.stack([s.cpu() for s in rec.sums])
    return total


@torch.no_grad()
def greedy_bank(model: nn.Module, tokenizer, blocks: list[FFNBlock], seed: int = 0, rows: int = 256,
                prefix: int = 8, length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Each greedy reply's own statistic, for the global view of the nearest replies
    (``neighbours``): ``rows`` sequences written as for ``greedy_statistic`` (the same sequence
    indices, so its rows come first), one batch. Returns the (R, n_blocks, d_ff) sums of
    ``u^2`` over each row's greedy tokens and the (R,) token counts, rows that wrote EOS within
    their sampled start left out."""
    _, sums, counts, _ = greedy_replies(model, tokenizer, blocks, seed, rows, prefix, length,
                                        "the bank of greedy replies")
    keep = counts > 0
    if not bool(keep.any()):
        raise ValueError("every greedy sequence wrote EOS within its sampled start; raise the bank's rows")
    return torch.stack(sums, 1)[keep], counts[keep]
