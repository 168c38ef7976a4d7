"""Build a global prior from text the model writes itself, or from a text corpus.

Self-sampling (the default, DESIGN section 4): sequences are sampled at temperature 1
from the full distribution, starting at BOS and, for chat models, also from an empty
user turn. Batch ``i`` is seeded with ``seed + i``, so the sequences depend on the
batch index only: a run split over several processes samples the same text.
The statistic is accumulated over the generated tokens (up to and including EOS).
"""

from __future__ import annotations

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


@torch.no_grad()
def build_self_prior_sums(model, tokenizer, n_tokens: int = 16384, seq_len: int = 128, batch_size: int = 16,
                          seed: int = 0, rank: int = 0, world: int = 1, progress: bool = True,
                          all_sum=lambda x: x):
    """Sample batches until ``n_tokens`` generated tokens have been read.

    Work runs in rounds of ``world`` batches (batch ``round * world + rank`` on this
    process); ``all_sum`` turns this process's token count into the count over all
    processes (identity for one process), so every process stops after the same round.
    """
    blocks = find_ffn_blocks(model)
    rec = ActivationRecorder(model, blocks)
    bar = tqdm(total=n_tokens, desc="sampling prior text", unit="tok", disable=not progress)
    total, rnd = 0, 0
    while total < n_tokens:
        seqs, mask = sample_batch(model, tokenizer, rnd * world + rank, seq_len, batch_size, seed)
        with rec:
            rec.run(model, seqs, mask, attention_mask=torch.ones_like(seqs))
        new_total = int(all_sum(rec.tokens))
        bar.update(min(new_total, n_tokens) - min(total, n_tokens))
        total, rnd = new_total, rnd + 1
    bar.close()
    return rec.sums, rec.tokens, rnd


@torch.no_grad()
def build_text_prior_sums(model, tokenizer, texts: list[str], n_tokens: int = 16384, seq_len: int = 128,
                          batch_size: int = 16, rank: int = 0, world: int = 1, progress: bool = True):
    blocks = find_ffn_blocks(model)
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
    batches = [chunks[i:i + batch_size] for i in range(0, len(chunks), batch_size)]
    mine = batch_indices(len(batches), rank, world)
    rec = ActivationRecorder(model, blocks)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for i in tqdm(mine, desc="reading prior text", unit="batch", disable=not progress):
        rows = batches[i]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, piece in enumerate(rows):
            ids[r, :len(piece)] = torch.tensor(piece)
            mask[r, :len(piece)] = 1
        with rec:
            rec.run(model, ids.to(model.device), mask.to(model.device))
    return rec.sums, rec.tokens, len(batches)


def build_prior(model: nn.Module, tokenizer, source: str = "self", n_tokens: int = 16384, seq_len: int = 128,
                batch_size: int = 16, seed: int = 0, progress: bool = True) -> Prior:
    """Build a prior in this process. ``source`` is "self", a corpus name or a text file."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if source == "self":
        sums, count, _ = build_self_prior_sums(model, tokenizer, n_tokens, seq_len, batch_size, seed, progress=progress)
        info = {"kind": "self", "seq_len": seq_len, "batch_size": batch_size, "seed": seed, "temperature": 1.0,
                "requested_tokens": n_tokens}
    else:
        from .corpora import load_texts

        texts = load_texts(source)
        sums, count, _ = build_text_prior_sums(model, tokenizer, texts, n_tokens, seq_len, batch_size, progress=progress)
        info = {"kind": "text", "name": str(source), "seq_len": seq_len, "requested_tokens": n_tokens}
    return prior_from_sums(model, sums, count, info)


def get_or_build_prior(model: nn.Module, tokenizer, model_name: str, source: str = "self", n_tokens: int = 16384,
                       path=None, progress: bool = True, seed: int = 0) -> Prior:
    """Load the cached prior for ``model_name`` (or ``path``), building and caching it first
    if it does not exist yet."""
    from .commands.common import default_prior_path
    from .prior import load_prior, save_prior

    path = path or default_prior_path(model_name, source, n_tokens)
    from pathlib import Path

    if Path(path).is_file():
        prior = load_prior(path)
        prior.check_matches(model)
        return prior
    prior = build_prior(model, tokenizer, source=source, n_tokens=n_tokens, seed=seed, progress=progress)
    save_prior(prior, path)
    return prior
