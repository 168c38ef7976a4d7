"""Request bodies of the OpenAI completions and chat completions APIs: parsing,
validation (every error names the offending field) and tokenization.

The GLASS extension is an optional object ``"glass": {"method", "density", "lam", "loop_guard"}``;
it is checked the same way the command line checks its options
(``GlassConfig(...).resolved()``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..engine import GlassConfig
from ..guard import check_loop_guard
from ..methods import get_method

CHAT_ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type_, code


@dataclass(frozen=True)
class GlassSettings:
    method: str
    density: float
    lam: float | None = None
    loop_guard: int = 0

    def config(self, share_batch: bool = False) -> GlassConfig:
        return GlassConfig(method=self.method, density=self.density, lam=self.lam, share_batch=share_batch,
                           loop_guard=self.loop_guard)


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    seed: int | None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GenerationRequest:
    """One validated request; ``prompt_ids`` is filled in by :func:`encode`."""

    kind: str  # "chat" or "completion"
    prompt: Any  # the messages list or the prompt string
    max_tokens: int | None
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    sampling: Sampling
    glass: GlassSettings
    prompt_ids: list[int] | None = None

    def batch_key(self) -> tuple:
        """Requests with equal keys may share one batch."""
        return (self.sampling, self.glass)


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_json")
    return body


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{name}' must be a number, got {json.dumps(value)}", param=name)
    if value < lo or value > hi or (lo_open and value == lo):
        bound = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise RequestError(f"'{name}' must lie in {bound}, got {value}", param=name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer, got {json.dumps(value)}", param=name)
    if value < lo or (hi is not None and value > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise RequestError(f"'{name}' must be {bound}, got {value}", param=name)
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be true or false, got {json.dumps(value)}", param=name)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError("'stop' must be a string or a list of strings", param="stop")
    if len(items) > MAX_STOP:
        raise RequestError(f"'stop' takes at most {MAX_STOP} strings, got {len(items)}", param="stop")
    if any(s == "" for s in items):
        raise RequestError("'stop' strings must not be empty", param="stop")
    return tuple(items)


def parse_glass(body: dict, default: GlassSettings, has_prior: bool) -> GlassSettings:
    """The optional ``glass`` extension, validated like the command line's options."""
    value = body.get("glass")
    if value is None:
        return default
    if not isinstance(value, dict):
        raise RequestError("'glass' must be an object such as {\"method\": \"glass\", \"density\": 0.5}", param="glass")
    unknown = sorted(set(value) - {"method", "density", "lam", "loop_guard"})
    if unknown:
        raise RequestError(f"unknown field(s) in 'glass': {', '.join(unknown)}; allowed: method, density, lam, "
                           "loop_guard", param=f"glass.{unknown[0]}")
    method = value.get("method", default.method)
    if not isinstance(method, str):
        raise RequestError("'glass.method' must be a string", param="glass.method")
    try:
        spec = get_method(method)
    except ValueError as err:
        raise RequestError(str(err), param="glass.method") from None
    density = value.get("density", default.density)
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise RequestError(f"'glass.density' must be a number, got {json.dumps(density)}", param="glass.density")
    lam = value.get("lam", default.lam if method == default.method else None)
    if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float))):
        raise RequestError(f"'glass.lam' must be a number, got {json.dumps(lam)}", param="glass.lam")
    for field, config in (("density", GlassConfig(method=method, density=density)),
                          ("lam", GlassConfig(method=method, density=density, lam=lam))):
        try:
            config.resolved()
        except ValueError as err:
            raise RequestError(f"glass.{field}: {err}", param=f"glass.{field}") from None
    loop_guard = value.get("loop_guard", default.loop_guard)
    try:
        check_loop_guard(loop_guard)
    except ValueError as err:
        raise RequestError(f"glass.loop_guard: {err}", param="glass.loop_guard") from None
    if spec.needs_prior_at(lam) and not has_prior:
        raise RequestError(f"method {method!r} needs a global prior and this server has none; restart it with "
                           "--prior FILE or with --method set to a method that uses a prior", param="glass.method")
    return GlassSettings(method=method, density=float(density), lam=None if lam is None else float(lam),
                         loop_guard=loop_guard)


def _unsupported(body: dict) -> None:
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise RequestError("'logprobs' is not supported by this server", param="logprobs")
    if body.get("echo"):
        raise RequestError("'echo' is not supported by this server", param="echo")
    if body.get("best_of") not in (None, 1):
        raise RequestError("'best_of' is not supported by this server; use 'n'", param="best_of")
    if body.get("tools"):
        raise RequestError("'tools' (function calling) is not supported by this server", param="tools")
    if body.get("suffix"):
        raise RequestError("'suffix' is not supported by this server", param="suffix")


def _messages(body: dict) -> list[dict]:
    value = body.get("messages")
    if value is None:
        raise RequestError("'messages' is required: a list of {\"role\", \"content\"} objects", param="messages")
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError(f"'{where}' must be an object with 'role' and 'content'", param=where)
        role = msg.get("role")
        if role not in CHAT_ROLES:
            raise RequestError(f"'{where}.role' must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(role)}",
                               param=f"{where}.role")
        content = msg.get("content")
        if isinstance(content, list):  # content parts: only text is understood
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise RequestError(f"'{where}.content' parts must be {{\"type\": \"text\", \"text\": ...}}",
                                       param=f"{where}.content")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise RequestError(f"'{where}.content' must be a string", param=f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise RequestError("empty prompt: every message in 'messages' is empty", param="messages")
    return out


def _prompt(body: dict) -> str:
    value = body.get("prompt")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if value is None:
        raise RequestError("'prompt' is required: the text to continue", param="prompt")
    if not isinstance(value, str):
        raise RequestError("'prompt' must be a string (or a list holding one string)", param="prompt")
    if not value.strip():
        raise RequestError("empty prompt: 'prompt' must contain some text", param="prompt")
    return value


def parse_request(kind: str, body: dict, default: GlassSettings, has_prior: bool, max_batch: int) -> GenerationRequest:
    """Validate a chat (``kind="chat"``) or completion request body."""
    _unsupported(body)
    if "model" in body and not isinstance(body["model"], str):
        raise RequestError("'model' must be a string", param="model")
    prompt = _messages(body) if kind == "chat" else _prompt(body)
    name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, None, 1)
    n = _integer(body, "n", 1, 1, max_batch)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    sampling = Sampling(temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                        seed=_integer(body, "seed", None, -(2 ** 63), 2 ** 63 - 1))
    return GenerationRequest(kind=kind, prompt=prompt, max_tokens=max_tokens, n=n, stop=_stop(body),
                             stream=_flag(body, "stream"), include_usage=_flag(options or {}, "include_usage"),
                             sampling=sampling, glass=parse_glass(body, default, has_prior))


def encode(tokenizer, req: GenerationRequest, context_length: int, default_max_tokens: int) -> None:
    """Tokenize the prompt (chat template for chat requests), check it against the
    model's context and fill in ``prompt_ids`` and ``max_tokens``."""
    if req.kind == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError("this model has no chat template; use /v1/completions", param="messages")
        ids = tokenizer.apply_chat_template(req.prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = list(ids["input_ids"])
        param = "messages"
    else:
        ids = list(tokenizer(req.prompt)["input_ids"])
        param = "prompt"
    if not ids:
        raise RequestError("empty prompt: it encodes to no tokens", param=param)
    if len(ids) >= context_length:
        raise RequestError(f"the prompt has {len(ids)} tokens but the model's context is {context_length} tokens; "
                           "shorten the prompt", param=param, status=413, code="context_length_exceeded")
    room = context_length - len(ids)
    if req.max_tokens is None:
        req.max_tokens = min(default_max_tokens, room)
    elif req.max_tokens > room:
        raise RequestError(f"the prompt has {len(ids)} tokens and max_tokens is {req.max_tokens}, together more than "
                           f"the model's context of {context_length} tokens; lower max_tokens or shorten the prompt",
                           param="max_tokens", code="context_length_exceeded")
    req.prompt_ids = ids
