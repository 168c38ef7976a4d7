"""The resume journal: one JSON line per finished work item, appended and flushed, so
an interrupted evaluation resumes where it stopped. Its file name carries the settings
key (``plan.settings_key``), so a journal is never reused for other settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import atomic_write


def journal_path(out_dir: str | os.PathLike, key: str) -> Path:
    return Path(out_dir) / f"journal-{key}.jsonl"


def read_journal(path: Path) -> dict[str, list[dict]]:
    """Finished items (id -> records). A torn last line (a crash mid-write) is dropped,
    and the file is rewritten without it so that later appends stay readable."""
    if not path.is_file():
        return {}
    raw = path.read_text(encoding="utf-8")
    done, good_lines = parse_journal(raw)
    clean = "".join(ln + "\n" for ln in good_lines)
    if clean != raw:
        atomic_write(path, clean)
    return done


def parse_journal(raw: str) -> tuple[dict[str, list[dict]], list[str]]:
    done: dict[str, list[dict]] = {}
    good_lines = []
    for line in raw.splitlines():
        try:
            entry = json.loads(line)
            item, records = entry["item"], entry["records"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        done[item] = records
        good_lines.append(line)
    return done, good_lines


def append_journal(path: Path, item_id: str, records: list[dict]) -> None:
    """Append one finished item as a single line, flushed to disk."""
    line = json.dumps({"item": item_id, "records": records}, sort_keys=True) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
