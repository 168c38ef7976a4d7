"""The default prior of a model: its settings, where it is cached, and how to find it.

Every command that needs a prior and is not given a file (``demo``, ``generate``,
``eval``, ``bench``, ``lm-eval``) and :func:`glass_llm.build.get_or_build_prior` use
the defaults below, so one prior per model serves them all. A cached prior counts when
it was built from the same source with at least the requested number of tokens; the
largest such file is used. Files live in ``$GLASS_LLM_CACHE/priors`` and are named
``MODEL-SOURCE-TOKENS.safetensors``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .models import cache_dir

DEFAULT_PRIOR_SOURCE = "self"
# 8192 self-sampled tokens: the size `glass demo` used. The prior-size ablation
# (2048 / 8192 / 16384 tokens, benchmarks/prior_speed.py and `glass eval --prior`) that
# should confirm it as the smallest size without a fidelity cost has not been run yet.
DEFAULT_PRIOR_TOKENS = 8192
# Self-sampling shape: sequences per forward and new tokens per sequence. On a loaded
# 2-core CPU, SmolLM2-135M sampled about 110 tokens/s at 64 x 128 and 140 at 128 x 128
# (one run each); a batch is capped at what the token budget needs (build.sampling_batch).
DEFAULT_SAMPLE_BATCH = 64
DEFAULT_SAMPLE_LEN = 128

_RATES_FILE = "rates.json"


def prior_dir() -> Path:
    return cache_dir() / "priors"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _source_tag(source: str) -> str:
    return _safe(Path(source).name)


def _model_tag(model_name: str) -> str:
    return _safe(str(model_name).strip("/"))[-80:]


def default_prior_path(model_name: str, source: str = DEFAULT_PRIOR_SOURCE,
                       n_tokens: int = DEFAULT_PRIOR_TOKENS) -> Path:
    """Where the prior of ``model_name`` built from ``source`` with ``n_tokens`` is cached."""
    return prior_dir() / f"{_model_tag(model_name)}-{_source_tag(source)}-{int(n_tokens)}.safetensors"


def _tokens_in_name(path: Path, prefix: str) -> int | None:
    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else None
    if stem is None or not stem.startswith(prefix):
        return None
    rest = stem[len(prefix):]
    return int(rest) if rest.isdigit() else None


def find_cached_prior(model_name: str, source: str = DEFAULT_PRIOR_SOURCE,
                      min_tokens: int = DEFAULT_PRIOR_TOKENS) -> Path | None:
    """The largest cached prior of ``model_name`` from ``source`` with at least
    ``min_tokens`` tokens, or None."""
    prefix = f"{_model_tag(model_name)}-{_source_tag(source)}-"
    best: tuple[int, Path] | None = None
    folder = prior_dir()
    if not folder.is_dir():
        return None
    for path in folder.glob(f"{prefix}*.safetensors"):
        n = _tokens_in_name(path, prefix)
        if n is not None and n >= min_tokens and path.is_file() and (best is None or n > best[0]):
            best = (n, path)
    return None if best is None else best[1]


@dataclass(frozen=True)
class CachedPrior:
    path: Path
    model: str
    source: str
    tokens: int
    size_bytes: int


def _read_meta(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return json.loads((fh.metadata() or {}).get("glass_prior", "{}"))
    except Exception:  # an unreadable file is listed as such, never fatal here
        return {}


def list_cached_priors() -> list[CachedPrior]:
    """Every prior in the cache folder, with the model and source its name and metadata give."""
    folder = prior_dir()
    out = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        meta = _read_meta(path)
        src = meta.get("source", {})
        source = src.get("name", src.get("kind", "?")) if src else "?"
        head, _, size = path.name[: -len(".safetensors")].rpartition("-")
        tag = f"-{_source_tag(source)}"
        model = head[: -len(tag)] if size.isdigit() and head.endswith(tag) else meta.get("model", {}).get("name", "?")
        tokens = int(meta.get("n_tokens", 0)) if meta else 0
        out.append(CachedPrior(path=path, model=model if meta else "unreadable", source=source, tokens=tokens,
                               size_bytes=path.stat().st_size))
    return out


def format_cached(priors: list[CachedPrior]) -> str:
    if not priors:
        return f"no cached priors in {prior_dir()}"
    lines = [f"{'model':<24} {'source':<12} {'tokens':>7} {'size':>8}  path"]
    for p in priors:
        lines.append(f"{p.model:<24} {p.source:<12} {p.tokens:>7} {p.size_bytes / 1024:>6.0f}KB  {p.path}")
    return "\n".join(lines)


# --- build-time estimates -------------------------------------------------------------

def _rates_path() -> Path:
    return prior_dir() / _RATES_FILE


def measured_build(model_name: str) -> tuple[float | None, float | None]:
    """``(prior tokens sampled per s, seconds of selection calibration)`` of the last build of
    ``model_name`` on this machine; None for what was not measured. An older file holds the rate alone."""
    try:
        entry = json.loads(_rates_path().read_text(encoding="utf-8")).get(_model_tag(model_name))
    except (OSError, ValueError, AttributeError):
        return None, None
    if not isinstance(entry, dict):
        entry = {"tokens_per_s": entry}
    out = []
    for key in ("tokens_per_s", "calibration_s"):
        try:
            v = float(entry.get(key) or 0)
        except (TypeError, ValueError):
            v = 0.0
        out.append(v if v > 0 and math.isfinite(v) else None)
    return out[0], out[1]


def record_rate(model_name: str, tokens_per_s: float, calibration_s: float | None = None) -> None:
    """Remember the sampling rate and, when it ran, the calibration time (written atomically; best
    effort: never fails a build). A build without calibration keeps the last calibration time."""
    path = _rates_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            rates = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rates = {}
        previous = measured_build(model_name)[1]
        entry = {"tokens_per_s": round(float(tokens_per_s), 1)}
        if calibration_s is not None or previous is not None:
            entry["calibration_s"] = round(float(previous if calibration_s is None else calibration_s), 1)
        rates[_model_tag(model_name)] = entry
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(rates, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds))} s" if seconds < 90 else f"{round(seconds / 60)} min"


def build_notice(model_name: str, source: str, n_tokens: int) -> str:
    """What is about to be built, how long it should take, and how to build it ahead of time."""
    what = "text the model samples itself" if source == DEFAULT_PRIOR_SOURCE else f"text from {source}"
    rate, calibration_s = measured_build(model_name)
    if rate is None:
        eta = ("the first build on this machine: sampling takes a minute or two on a 2-core CPU, and the selection "
               "calibration after it, once per prior, several times longer (minutes on an idle CPU; run nothing "
               "else heavy meanwhile)")
    else:
        sampling = f"about {_duration(n_tokens / rate)} of sampling at {rate:.0f} tokens/s"
        eta = (f"{sampling} and {_duration(calibration_s)} of selection calibration (as the last build here)"
               if calibration_s else f"{sampling} (as the last build here), then the selection calibration, "
                                     "which takes much longer")
    src = "" if source == DEFAULT_PRIOR_SOURCE else f" --source {source}"
    size = "" if n_tokens == DEFAULT_PRIOR_TOKENS else f" --tokens {n_tokens}"
    return (f"no cached prior for {model_name} with >= {n_tokens} tokens from {source}: building one from "
            f"{n_tokens} tokens of {what}, {eta}; cached in {default_prior_path(model_name, source, n_tokens)}.\n"
            f"To build it once ahead of time: glass prior {model_name}{src}{size}")
