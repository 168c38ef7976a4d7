"""Run one batch of requests through ``model.generate`` with GLASS applied.

Prompts are left-padded into one batch; GLASS picks each row's neurons from its own
unpadded prompt tokens (or one shared set with ``share_batch``). A stopping criterion
looks at every new token of every row: it streams the row's new text to its request,
ends the row at EOS, at a stop string, at the row's own ``max_tokens`` or when its
client has gone, and generation ends when every row has ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..engine import GlassConfig, apply_glass
from .protocol import Sampling


@dataclass
class Row:
    """One sequence being generated: choice ``index`` of a request."""

    index: int
    max_tokens: int
    stop: tuple[str, ...]
    emit: Callable[[tuple], None]  # receives ("delta", index, text) and ("done", index, reason, n_tokens)
    cancelled: Callable[[], bool]
    ids: list[int] = field(default_factory=list)
    n_tokens: int = 0
    sent: int = 0
    done: bool = False

    def finish(self, reason: str, text: str | None = None) -> None:
        if text is not None and len(text) > self.sent:
            self.emit(("delta", self.index, text[self.sent:]))
            self.sent = len(text)
        self.done = True
        self.emit(("done", self.index, reason, self.n_tokens))


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might still become a stop string (or a character)."""
    if text.endswith("\ufffd"):  # an incomplete multi-byte character
        return len(text)
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if s.startswith(text[-k:]):
                hold = k
                break
    return hold


class RowMonitor(StoppingCriteria):
    """Per-step bookkeeping of every row; returns which rows are finished."""

    def __init__(self, rows: list[Row], tokenizer, eos_ids: set[int]):
        self.rows, self.tokenizer, self.eos_ids = rows, tokenizer, eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if not row.done:
                self.step(row, token)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def step(self, row: Row, token: int) -> None:
        row.n_tokens += 1
        if row.cancelled():
            row.finish("cancelled")
            return
        if token in self.eos_ids:
            row.finish("stop", self.text(row))
            return
        row.ids.append(token)
        text = self.text(row)
        cut = min((i for i in (text.find(s) for s in row.stop) if i >= 0), default=-1)
        if cut >= 0:
            row.finish("stop", text[:cut])
        elif row.n_tokens >= row.max_tokens:
            row.finish("length", text)
        else:
            end = len(text) - held_back(text, row.stop)
            if end > row.sent:
                row.emit(("delta", row.index, text[row.sent:end]))
                row.sent = end

    def text(self, row: Row) -> str:
        return self.tokenizer.decode(row.ids, skip_special_tokens=True)

    def close(self) -> None:
        """Rows still open when ``generate`` returns ran out of tokens."""
        for row in self.rows:
            if not row.done:
                row.finish("length", self.text(row))


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


class KeptGlass:
    """One GLASS handle kept on the model between batches of the same config, for a server. Each
    batch still selects its own neurons; what is kept is the set-up of ``apply_glass`` and the
    compact weight buffers, which a new handle allocates afresh and then pays a page fault per 4 KB
    for on first write (together about 59 ms of a 16-token request for SmolLM2-135M at density 0.5
    on 2 CPU cores; BENCHMARKS.md, "Serving"). Another config removes the handle and applies anew;
    ``close`` restores the model exactly."""

    def __init__(self, model, prior=None):
        self.model, self.prior = model, prior
        self.handle, self.config = None, None

    def use(self, config: GlassConfig) -> None:
        if self.handle is not None and self.config == config:
            return
        self.close()
        self.handle = apply_glass(self.model, config, prior=self.prior)
        self.config = config

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle = self.config = None


@torch.no_grad()
def run_batch(model, tokenizer, prompts: list[list[int]], rows: list[Row], sampling: Sampling,
              config: GlassConfig, prior=None, eos_ids: set[int] | None = None, kept: KeptGlass | None = None) -> None:
    """Generate every row (``rows[i]`` continues ``prompts[i]``); results go to the rows' ``emit``.
    With ``kept`` the config is applied through it (and stays applied after the batch); a batch
    that fails removes it, so the next one starts from the model as loaded."""
    device = model.get_input_embeddings().weight.device  # where inputs go, also for a sharded model
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    monitor = RowMonitor(rows, tokenizer, eos_token_ids(model, tokenizer) if eos_ids is None else eos_ids)
    gen = dict(max_new_tokens=max(r.max_tokens for r in rows), do_sample=not sampling.greedy,
               pad_token_id=tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([monitor]))
    if not sampling.greedy:
        gen.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    if kept is None:
        with apply_glass(model, config, prior=prior):
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen)
    else:
        try:
            kept.use(config)
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen)
        except BaseException:
            kept.close()
            raise
    monitor.close()
