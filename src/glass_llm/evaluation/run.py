"""Run (or resume) a fidelity evaluation and write its outputs.

Work items run in rounds spread over the processes of a run (``rank``/``world`` and a
``gather`` hook); only rank 0 writes the journal and the outputs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from ..corpora import load_texts
from ..io import atomic_write
from ..prior import Prior, model_identity
from .journal import append_journal, journal_path, parse_journal, read_journal
from .plan import EvalError, EvalSettings, WorkItem, plan_items, settings_key
from .report import (aggregate, comparisons_markdown, paired_comparisons, records_csv, results_csv,
                     results_markdown)
from .score import evaluate_item

Gather = Callable[[list[dict]], list[dict]]


def _identity(records: list[dict]) -> list[dict]:
    return records


def _paired_markdown(records: Sequence[dict]) -> str:
    """Paired comparisons against GRIFFIN, when it was run (section for results.md)."""
    table = comparisons_markdown(paired_comparisons(records, "griffin"))
    return f"\n### Paired against griffin on the same prompts (95% t intervals)\n\n{table}" if table else ""


def write_outputs(out_dir: str | os.PathLike, results: list[dict], settings: EvalSettings, key: str,
                  plots: bool = True, records: Sequence[dict] = ()) -> list[Path]:
    """results.json, results.csv, results.md, settings.json, the per-prompt records.csv
    (when ``records`` are given) and the PNG plots."""
    out = Path(out_dir)
    written = [
        atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n"),
        atomic_write(out / "results.csv", results_csv(results)),
        atomic_write(out / "results.md", results_markdown(results, title=f"Fidelity: {settings.model}")
                     + _paired_markdown(records)),
        atomic_write(out / "settings.json", json.dumps({"key": key, **asdict(settings)}, indent=1) + "\n"),
    ]
    if records:
        written.append(atomic_write(out / "records.csv", records_csv(records)))
    if plots:
        from ..plots import write_plots  # matplotlib only when plots are asked for

        written += write_plots(results, out)
    return written


@dataclass
class EvalRun:
    """What ``run_eval`` returns: per-prompt records, aggregated results, the journal key."""

    records: list[dict]
    results: list[dict]
    key: str
    items: list[WorkItem] = field(default_factory=list)


def run_eval(model: nn.Module, tokenizer, settings: EvalSettings, prior: Prior | None = None,
             out_dir: str | os.PathLike | None = None, rank: int = 0, world: int = 1, gather: Gather = _identity,
             progress: bool = True, plots: bool = True, docs: Sequence[str] | None = None,
             max_items: int | None = None, extra: dict | None = None, write_partial: bool = False) -> EvalRun:
    """Run (or resume) the evaluation.

    Pending items run in rounds of ``world``: in round ``i`` this process evaluates
    pending item ``i * world + rank``; ``gather`` turns this process's records into all
    processes' records (identity for one process) and is called once per round on every
    rank. Only rank 0 writes the journal and the outputs. ``docs`` overrides the corpus
    (for tests); ``max_items`` stops after that many new items. Outputs are written once
    every item is done, or from whatever is done when ``write_partial`` is set (the
    tables then say how many prompts each cell holds).
    """
    settings.validate()
    if not 0 <= rank < world:
        raise EvalError(f"rank {rank} is outside world size {world}")
    if settings.needs_prior() and prior is None:
        raise EvalError("the methods " + ", ".join(settings.prior_methods())
                        + " need a global prior (build one with `glass prior`)")
    if prior is not None and settings.needs_prior():
        prior.check_matches(model)
    docs = list(docs) if docs is not None else load_texts(settings.corpus)
    items = plan_items(settings, tokenizer, docs)
    key = settings_key(settings, items, model_identity(model), prior)
    journal = None if out_dir is None else journal_path(out_dir, key)
    done: dict[str, list[dict]] = {}
    if journal is not None and rank == 0:
        done = read_journal(journal)
    elif journal is not None and journal.is_file():
        done = parse_journal(journal.read_text(encoding="utf-8"))[0]
    pending = [it for it in items if it.id not in done]
    if max_items is not None:
        pending = pending[:max_items]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len([it for it in items if it.id not in done]),
               desc=f"eval {settings.model}", unit="batch", disable=not progress or rank != 0)
    rounds = (len(pending) + world - 1) // world
    for rnd in range(rounds):
        i = rnd * world + rank
        mine = evaluate_item(model, tokenizer, pending[i], settings, prior) if i < len(pending) else []
        everyone = gather(mine)
        by_item: dict[str, list[dict]] = {}
        for rec in everyone:
            by_item.setdefault(rec["item"], []).append(rec)
        for item_id, recs in by_item.items():
            done[item_id] = recs
            if journal is not None and rank == 0:
                append_journal(journal, item_id, recs)
        bar.update(len(by_item))
    bar.close()
    records = [rec for it in items if it.id in done for rec in done[it.id]]
    guard = {"loop_guard": settings.loop_guard} if settings.loop_guard else {}
    results = aggregate(records, settings, {**(extra or {}), **guard})
    if out_dir is not None and rank == 0 and records and (write_partial or all(it.id in done for it in items)):
        write_outputs(out_dir, results, settings, key, plots=plots, records=records)
    return EvalRun(records=records, results=results, key=key, items=items)
