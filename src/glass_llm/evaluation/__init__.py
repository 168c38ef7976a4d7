"""Fidelity evaluation: how close each method stays to the dense model (docs/method.md,
"Measuring fidelity").

* ``plan``: settings, document splits, work items, the journal key;
* ``score``: one work item (dense references, teacher-forced methods, oracle sets);
* ``journal``: the resume journal;
* ``report``: aggregation with intervals, paired comparisons, CSV/markdown, labels;
* ``run``: ``run_eval``, the driver, and the output files.
"""

from .journal import append_journal, journal_path, parse_journal, read_journal
from .plan import (DEFAULT_METHODS, JOURNAL_VERSION, ORACLE, SPLITS, EvalError, EvalSettings, MethodRun, WorkItem,
                   method_runs, plan_items, settings_key, split_documents)
from .report import (CSV_FIELDS, RECORD_FIELDS, aggregate, comparisons_markdown, method_label, paired_comparisons,
                     read_records_csv, records_csv, results_csv, results_markdown)
from .run import EvalRun, Gather, run_eval, write_outputs
from .score import evaluate_item, generate_references, oracle_sums, teacher_rows

__all__ = [
    "append_journal", "journal_path", "parse_journal", "read_journal", "DEFAULT_METHODS", "JOURNAL_VERSION",
    "ORACLE", "SPLITS", "EvalError", "EvalSettings", "MethodRun", "WorkItem", "method_runs", "plan_items",
    "settings_key", "split_documents", "CSV_FIELDS", "RECORD_FIELDS", "aggregate", "comparisons_markdown",
    "method_label", "paired_comparisons", "read_records_csv", "records_csv", "results_csv", "results_markdown",
    "EvalRun", "Gather", "run_eval", "write_outputs", "evaluate_item", "generate_references", "oracle_sums",
    "teacher_rows",
]
