"""Token-id conventions shared by every module that pads or generates."""

from __future__ import annotations


def pad_id(tokenizer) -> int:
    """The id used to fill padding positions: the tokenizer's pad token, else its EOS
    token (what transformers' ``generate`` falls back to), else 0. Padded positions are
    always masked out, so the id only has to be a valid token."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(tid, (list, tuple)):
            tid = tid[0] if tid else None
        if tid is not None:
            return int(tid)
    return 0
