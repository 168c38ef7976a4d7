"""Sample text from the model itself and record the FFN statistic in the same forwards.

Sequence ``i`` of a self-sampled prior starts from prompt ``i % len(prompts)`` (BOS, and
for chat models also an empty user turn) and is sampled at temperature 1 from the full
distribution by inverse-CDF sampling with its own stream of uniforms, drawn from a
generator seeded by ``(seed, i)`` only. So the text of a sequence does not depend on
which other sequences share its batch or on which process samples it; batching changes
only the float rounding of the logits.

The statistic is recorded while decoding: every generated token is fed back once
(the last one too), and the forward that reads it adds its ``u^2`` to its row, up to
and including the row's first EOS. Prompt tokens (the prefill) and tokens after EOS
never enter it: the same tokens as a second, teacher-forced pass over the sampled
text would count, without that pass.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .adapters import FFNBlock
from .stats import accumulate_activation


def self_prompts(tokenizer) -> list[list[int]]:
    """The prompts sequences start from: BOS, plus an empty user turn for chat models."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prompts = [[bos]]
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True,
                                            return_dict=True)
        prompts.append(list(enc["input_ids"]))
    return prompts


def sequence_uniforms(seed: int, index: int, n: int) -> torch.Tensor:
    """The ``n`` uniforms that sample sequence ``index`` (float64, depends on seed and index only)."""
    digest = hashlib.sha256(f"glass-prior:{seed}:{index}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.rand(n, generator=gen, dtype=torch.float64)


def eos_ids_of(model: nn.Module, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    return [int(i) for i in ids]


_BLOCK = 256


def greedy_tokens(logits: torch.Tensor, suppress: list[int]) -> torch.Tensor:
    """The most likely token of every row (the first on ties), never a suppressed one."""
    logits = logits.float()
    if suppress:
        logits[:, suppress] = float("-inf")
    return logits.argmax(-1)


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, suppress: list[int]) -> torch.Tensor:
    """Inverse-CDF sampling at temperature 1: row ``r`` takes the first token whose
    cumulative probability exceeds ``u[r]``. The CDF is walked in two levels (blocks of
    256 tokens, then within the chosen block), in float64, so no full-vocabulary cumsum
    is needed."""
    logits = logits.float()
    if suppress:
        logits[:, suppress] = float("-inf")
    rows, vocab = logits.shape
    probs = torch.softmax(logits, dim=-1)
    n_blocks = -(-vocab // _BLOCK)
    if n_blocks * _BLOCK != vocab:
        probs = torch.nn.functional.pad(probs, (0, n_blocks * _BLOCK - vocab))
    probs = probs.view(rows, n_blocks, _BLOCK).double()
    block_cdf = probs.sum(-1).cumsum(-1)
    target = u.to(block_cdf.device) * block_cdf[:, -1]
    block = torch.searchsorted(block_cdf, target.unsqueeze(-1)).squeeze(-1).clamp_max(n_blocks - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1),
                         torch.zeros_like(target))
    inner = probs[torch.arange(rows, device=probs.device), block].cumsum(-1)
    pos = torch.searchsorted(inner, (target - before).unsqueeze(-1)).squeeze(-1).clamp_max(_BLOCK - 1)
    return (block * _BLOCK + pos).clamp_max(vocab - 1)


class _RowRecorder:
    """Forward pre-hooks on each block's output projection that add the statistic of
    the current step's tokens into per-row sums of the current batch; ``flush`` moves
    them into the per-sequence sums (batch row ``b`` is sequence ``rows[b]``)."""

    def __init__(self, blocks: list[FFNBlock], n_rows: int):
        self.sums = [torch.zeros(n_rows, b.d_ff) for b in blocks]
        self.rows = torch.arange(n_rows)
        self.recording = False
        self._cur: list[torch.Tensor | float] = [0.0] * len(blocks)
        self._handles = [b.output_module.register_forward_pre_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i: int):
        def hook(module, args):
            if self.recording:  # one token per row: (B, 1, d_ff), or (B, d_ff) where a model (OPT) flattens it
                z = args[0] if args[0].dim() == 3 else args[0].unsqueeze(1)
                self._cur[i] = self._cur[i] + accumulate_activation(z)

        return hook

    def flush(self) -> None:
        for s, cur in zip(self.sums, self._cur):
            if isinstance(cur, torch.Tensor):
                s.index_add_(0, self.rows, cur.to(s.device))
        self._cur = [0.0] * len(self._cur)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.no_grad()
def sample_and_record(model: nn.Module, tokenizer, blocks: list[FFNBlock], indices: list[int], seq_len: int,
                      seed: int, greedy_after: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sample sequences ``indices`` (``seq_len`` new tokens each) in one batch.

    With ``greedy_after = n`` the first ``n`` tokens are sampled (they play a prompt) and
    the rest are chosen greedily; only the greedy tokens are recorded and counted: the
    model's own text as a greedy decode writes it (``calibration``'s greedy prior).

    Returns ``(sums, counts, tokens)``: per block the (rows, d_ff) float32 sums over each
    row's recorded tokens, each row's recorded token count, and the sampled tokens
    (rows, seq_len; zeros after a row's EOS: a finished row leaves the batch).
    """
    if greedy_after is not None and not 0 <= greedy_after < seq_len:
        raise ValueError(f"greedy_after must be in [0, {seq_len}), got {greedy_after}")
    first = 0 if greedy_after is None else greedy_after
    from transformers import DynamicCache

    prompts = self_prompts(tokenizer)
    rows, width = len(indices), max(len(p) for p in prompts)
    device = model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):  # left padding: every row's next token sits in the last column
        ids[r, width - len(p):] = torch.tensor(p)
        attn[r, width - len(p):] = 1
    uniforms = torch.stack([sequence_uniforms(seed, i, seq_len) for i in indices])
    eos = torch.tensor(eos_ids_of(model, tokenizer), dtype=torch.long)
    suppress = [int(t) for t in (model.generation_config.suppress_tokens or [])]
    ids, attn = ids.to(device), attn.to(device)
    positions = (attn.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache(config=model.config)
    rec = _RowRecorder(blocks, rows)
    tokens = torch.zeros((rows, seq_len), dtype=torch.long)
    counts = torch.zeros(rows, dtype=torch.long)
    try:
        # every distinct prompt is run once (always as the same small batch), then its
        # cache and next-token logits are copied to the rows that start from it
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        kind = torch.tensor([i % len(prompts) for i in indices], device=device)
        cache.batch_select_indices(kind)
        logits, attn, next_pos = logits[kind], attn[kind], positions[kind, -1] + 1
        live = torch.arange(rows)  # the sequences still in the batch, in batch order
        for t in range(seq_len):
            if greedy_after is not None and t >= greedy_after:
                tok = greedy_tokens(logits, suppress).cpu()
            else:
                tok = sample_tokens(logits, uniforms[live, t], suppress).cpu()
            tokens[live, t] = tok
            ended = torch.isin(tok, eos)  # EOS is recorded, what follows it is not
            counts[live] += int(t >= first)
            attn = torch.cat([attn, torch.ones((len(live), 1), dtype=attn.dtype, device=device)], dim=1)
            rec.recording = t >= first
            logits = model(input_ids=tok.unsqueeze(1).to(device), attention_mask=attn,
                           position_ids=next_pos.unsqueeze(1), cache=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1]
            rec.recording = False
            next_pos = next_pos + 1
            if ended.any():  # drop finished sequences from the batch
                rec.flush()
                keep = (~ended).nonzero().squeeze(-1)
                if len(keep) == 0:
                    break
                k = keep.to(device)
                cache.batch_select_indices(k)
                live, attn, next_pos, logits = live[keep], attn[k], next_pos[k], logits[k]
                rec.rows = live
        rec.flush()
    finally:
        rec.close()
    return [s.cpu() for s in rec.sums], counts, tokens
