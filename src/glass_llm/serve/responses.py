"""Response bodies and stream chunks in the OpenAI format, plus the ``glass`` object
that tells which method and density ran."""

from __future__ import annotations

import json
import time
import uuid

from ..engine import GlassConfig

OBJECTS = {"chat": ("chat.completion", "chat.completion.chunk", "chatcmpl-"),
           "completion": ("text_completion", "text_completion", "cmpl-")}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def glass_info(config: GlassConfig) -> dict:
    """What runs for this request: method, density (1 for dense), lam, shared selection, loop guard."""
    spec, lam, statistic = config.resolved()
    if spec.dense:
        return {"method": spec.name, "density": 1.0, "lam": None, "statistic": None, "share_batch": False,
                "loop_guard": 0}
    return {"method": spec.name, "density": float(config.density), "lam": lam, "statistic": statistic,
            "share_batch": bool(config.share_batch), "loop_guard": int(config.loop_guard)}


class Reply:
    """Builds the bodies of one request's response."""

    def __init__(self, kind: str, model: str, glass: dict):
        self.kind, self.model, self.glass = kind, model, glass
        self.object, self.chunk_object, prefix = OBJECTS[kind]
        self.id = prefix + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def full(self, texts: list[str], reasons: list[str], usage: dict) -> dict:
        if self.kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
        return {**self._head(self.object), "choices": choices, "usage": usage, "glass": self.glass}

    def chunk(self, index: int, text: str | None = None, reason: str | None = None, role: bool = False) -> dict:
        if self.kind == "chat":
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
        return {**self._head(self.chunk_object), "choices": [choice], "glass": self.glass}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head(self.chunk_object), "choices": [], "usage": usage, "glass": self.glass}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
