"""Scoring one work item: the dense references, every method teacher-forced on them,
and the oracle sets (the top-k neurons of the reference tokens themselves).

Per prompt and method run, a record holds the mean NLL of the reference and the mean
KL(dense || method) over the G - 1 positions where the sparse FFN applies, and the
per-layer Jaccard index of the method's neuron set with the oracle set. The
pseudo-method ``oracle`` decodes with the oracle set itself (chosen from the reference,
so not a real method): an upper bound for any fixed neuron set.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import down_column_norms, find_ffn_blocks
from ..calibrate import ActivationRecorder
from ..metrics import kl_per_token, token_nll
from ..prior import Prior, prior_from_sums
from ..ranking import jaccard, select
from ..stats import finalize
from ..teacher import continuation_logits
from ..tokens import pad_id
from .plan import ORACLE, EvalError, EvalSettings, WorkItem, method_runs


@torch.no_grad()
def generate_references(model: nn.Module, prompts: torch.Tensor, gen_tokens: int, pad: int) -> torch.Tensor:
    """Greedy dense continuations of ``gen_tokens`` tokens for a (B, P) batch of prompts."""
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                         max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, pad_token_id=pad,
                         temperature=None, top_p=None, top_k=None)
    return out[:, prompts.shape[1]:]


@torch.no_grad()
def oracle_sums(model: nn.Module, prompts: torch.Tensor, refs: torch.Tensor) -> list[torch.Tensor]:
    """Per-row activation sums (one (B, d_ff) tensor per layer) over the reference tokens
    that the sparse FFN processes (all but the last)."""
    ids = torch.cat([prompts, refs[:, :-1]], dim=1)
    mask = torch.zeros_like(ids)
    mask[:, prompts.shape[1]:] = 1
    rec = ActivationRecorder(model)
    rec.per_row = True
    with rec:
        rec.run(model, ids, mask, attention_mask=torch.ones_like(ids), logits_to_keep=1)
    return [s.cpu() for s in rec.take_row_sums()]


def _row_scores(sums: list[torch.Tensor], row: int, statistic: str, down_norms: list[torch.Tensor]) -> list[torch.Tensor]:
    return [finalize(s[row], statistic, n) for s, n in zip(sums, down_norms)]


def _row_sets(selections: list[torch.Tensor] | None, row: int, d_ff: list[int], density: float) -> list[torch.Tensor]:
    """Row ``row``'s (k,) index set per layer. Static methods return one (1, k) set for
    the batch; ``None`` (no sparsity applied, density 1) means every neuron."""
    if selections is None:
        if density < 1.0:
            raise EvalError("a sparse method returned no neuron sets")
        return [torch.arange(n) for n in d_ff]
    return [(s[row] if s.shape[0] > 1 else s[0]).cpu() for s in selections]


def teacher_rows(gen_tokens: int, vocab: int, budget_bytes: float = 4e8) -> int:
    """How many prompts to teacher-force together so that one (rows, G, V) float32
    logits tensor stays within ``budget_bytes``."""
    return max(1, int(budget_bytes // (gen_tokens * vocab * 4)))


@torch.no_grad()
def evaluate_item(model: nn.Module, tokenizer, item: WorkItem, settings: EvalSettings,
                  prior: Prior | None) -> list[dict]:
    """Records of every method run for every prompt of ``item`` (one dict per prompt and
    run, ordered by prompt, then run)."""
    device = next(model.parameters()).device
    prompts = torch.tensor(item.prompts, dtype=torch.long, device=device)
    refs = generate_references(model, prompts, settings.gen_tokens, pad_id(tokenizer))
    if refs.shape[1] != settings.gen_tokens:
        raise EvalError(f"the dense model wrote {refs.shape[1]} tokens instead of {settings.gen_tokens}")
    blocks = find_ffn_blocks(model)
    d_ff = [b.d_ff for b in blocks]
    down_norms = [down_column_norms(b).cpu() for b in blocks]
    sums = oracle_sums(model, prompts, refs)
    runs = method_runs(settings)
    oracle_sets: dict[tuple[int, str, float], list[torch.Tensor]] = {}

    def oracle_for(row: int, statistic: str, density: float) -> list[torch.Tensor]:
        key = (row, statistic, density)
        if key not in oracle_sets:
            scores = _row_scores(sums, row, statistic, down_norms)
            oracle_sets[key] = [select(s, None, 1.0, density) for s in scores]
        return oracle_sets[key]

    table: dict[tuple[int, int], dict] = {}
    B = prompts.shape[0]
    step = teacher_rows(settings.gen_tokens, int(model.get_output_embeddings().weight.shape[0]))
    for lo in range(0, B, step):
        rows = list(range(lo, min(B, lo + step)))
        p, r = prompts[lo:rows[-1] + 1], refs[lo:rows[-1] + 1]
        targets = r[:, 1:]
        dense_logits = continuation_logits(model, p, r, None)[0][:, 1:]
        dense_nll = token_nll(dense_logits, targets)
        for j, run in enumerate(runs):
            if run.method == "dense" and settings.weights == "float":
                for i, row in enumerate(rows):
                    table[row, j] = {"nll": float(dense_nll[i].mean()), "kl": 0.0, "jaccard": None}
                continue
            config = run.config(settings.seed, settings.weights, settings.loop_guard)
            # the oracle set differs per prompt, and the loop guard switches a batch's step for every row:
            # one row at a time
            if run.method == ORACLE or (settings.loop_guard and run.method != "dense"):
                parts = []
                for i, row in enumerate(rows):
                    row_prior = prior if run.method != ORACLE else prior_from_sums(
                        model, [s[row] for s in sums], settings.gen_tokens - 1, {"kind": "oracle"}, blocks)
                    logits, sel = continuation_logits(model, p[i:i + 1], r[i:i + 1], config, row_prior)
                    parts.append((logits[:, 1:], sel))
                results = [(row, i, lg[0], sel, 0) for (i, row), (lg, sel) in zip(enumerate(rows), parts)]
            else:
                logits, selections = continuation_logits(model, p, r, config, prior)
                logits = logits[:, 1:]
                results = [(row, i, logits[i], selections, i) for i, row in enumerate(rows)]
            for row, i, lg, sel, sel_row in results:
                nll = token_nll(lg, targets[i])
                kl = kl_per_token(dense_logits[i], lg)
                jac = None
                if run.method != "dense":  # int8 dense keeps every neuron: no set to compare
                    sets = _row_sets(sel, sel_row, d_ff, run.density)
                    oracle = oracle_for(row, run.statistic, run.density)
                    jac = [float(jaccard(a.unsqueeze(0), b.unsqueeze(0), n)[0]) for a, b, n in zip(sets, oracle, d_ff)]
                table[row, j] = {"nll": float(nll.mean()), "kl": float(kl.mean()), "jaccard": jac}
            del results
    records = []
    for row in range(B):
        for j, run in enumerate(runs):
            records.append({"item": item.id, "doc": item.docs[row], "prompt_tokens": item.prompt_tokens,
                            "method": run.method, "density": run.density, "lam": run.lam,
                            "statistic": run.statistic, **table[row, j], "positions": settings.gen_tokens - 1})
    return records
