"""Loop guard: a few dense decode steps when a sparse reply starts to repeat itself.

Greedy text from a model that keeps half of its FFN neurons falls into loops far more often
than the dense model's ("the sound of the sound of the sound ..."). A loop announces itself
early: the reply repeats a 4-gram it already wrote. Handed the text at that point, the dense
model usually writes its way out; a few tokens later the loop has grown and it too goes on
repeating. With ``loop_guard=K`` every decode step whose input token completes a 4-gram that
already occurred in the reply runs dense, and so do the next ``K - 1`` steps; then the sparse
FFNs take over again. The guard only reads the token ids; what it costs is its dense steps
(``LoopGuard.dense_steps``), which ``glass bench`` times like any other decode step.

A batch runs one mode per forward: a step is dense when any row's guard is on. A row that has
finished (its last token is one of ``stop_ids``, the model's end-of-sequence and padding ids)
no longer counts. ``guard_modes`` is the same rule over a whole continuation, so teacher-forced
evaluation splits its forward passes where generation switches.
"""

from __future__ import annotations

import torch

from .errors import GlassError

GUARD_NGRAM = 4


def check_loop_guard(steps, off: bool = True) -> None:
    """``steps`` is a whole number of dense decode steps >= 1, or 0 (off) where ``off`` allows it."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < (0 if off else 1):
        raise ValueError(f"loop_guard must be a whole number of dense decode steps >= 1 (or 0 for off), got {steps!r}")


class LoopGuard:
    """Per request: the reply's tokens so far, row by row, and the dense steps still owed."""

    def __init__(self, rows: int, steps: int, stop_ids: frozenset[int] = frozenset(), n: int = GUARD_NGRAM):
        check_loop_guard(steps, off=False)
        self.steps, self.n, self.stop_ids = steps, n, stop_ids
        self.tail: list[tuple[int, ...]] = [() for _ in range(rows)]
        self.seen: list[set[tuple[int, ...]]] = [set() for _ in range(rows)]
        self.left = [0] * rows
        self.triggers = 0  # repeated n-grams that switched a row to dense
        self.dense_steps = 0  # decode positions run dense because of the guard
        self.steps_seen = 0

    def _position(self, column: list[int]) -> bool:
        """Take one input token per row; whether this position runs dense."""
        dense = False
        for r, t in enumerate(column):
            if t in self.stop_ids:
                self.left[r] = 0
                continue
            gram = (self.tail[r] + (t,))[-self.n:]
            self.tail[r] = gram
            if len(gram) == self.n:
                if gram in self.seen[r]:
                    self.left[r] = self.steps
                    self.triggers += 1
                self.seen[r].add(gram)
            if self.left[r] > 0:
                self.left[r] -= 1
                dense = True
        self.steps_seen += 1
        self.dense_steps += dense
        return dense

    def feed(self, ids: torch.Tensor) -> list[bool]:
        """Take the input tokens (B, T) of a decode forward; whether each position runs dense."""
        return [self._position(col) for col in ids.t().tolist()]

    def step(self, ids: torch.Tensor, check: bool = True) -> bool:
        """``feed`` for one forward that runs in one mode: whether it runs dense. With ``check``
        a forward whose positions would switch mode is refused (feed fewer tokens at a time)."""
        if ids.is_floating_point():
            raise GlassError("the loop guard reads the token ids of each decode step, and this one came as "
                             "embeddings; pass input_ids or turn off loop_guard")
        modes = self.feed(ids)
        if check and any(m != modes[0] for m in modes):
            switch = next(i for i, m in enumerate(modes) if m != modes[0])
            raise GlassError(f"a decode forward of {len(modes)} tokens crosses a loop-guard switch after {switch} "
                             "of them (the guard decides dense or sparse per token); feed fewer tokens per forward")
        return modes[0]

    @property
    def dense_share(self) -> float:
        return self.dense_steps / self.steps_seen if self.steps_seen else 0.0


def guard_modes(tokens: torch.Tensor, steps: int, stop_ids: frozenset[int] = frozenset()) -> list[bool]:
    """Whether each position of a continuation fed as decode input (B, T) runs dense."""
    return LoopGuard(tokens.shape[0], steps, stop_ids).feed(tokens)


def stop_ids_of(model) -> frozenset[int]:
    """The end-of-sequence and padding ids of ``model``'s generation config (finished rows)."""
    cfg = getattr(model, "generation_config", None)
    ids: set[int] = set()
    for name in ("eos_token_id", "pad_token_id"):
        v = getattr(cfg, name, None)
        if v is None:
            continue
        ids.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return frozenset(ids)
