"""Named text corpora and user text files, as lists of documents."""

from __future__ import annotations

import json
from pathlib import Path

CORPORA: dict[str, callable] = {}


def register_corpus(name: str):
    def deco(fn):
        CORPORA[name] = fn
        return fn

    return deco


def load_texts(source: str) -> list[str]:
    """Documents of a named corpus, or of a file: ``.jsonl`` (a ``text`` field per line)
    or plain text (documents separated by blank lines)."""
    if source in CORPORA:
        return CORPORA[source]()
    path = Path(source)
    if not path.is_file():
        known = ", ".join(sorted(CORPORA)) or "none installed"
        raise ValueError(f"unknown text source {source!r}: not a corpus name ({known}) and not a file")
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise ValueError(f"{path}:{n}: each JSONL line needs a string field 'text'")
            docs.append(rec["text"])
    else:
        docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n")]
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"{path} holds no text")
    return docs
