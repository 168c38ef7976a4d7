"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models import DEFAULT_MODEL, cache_dir


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_model_arg(p: argparse.ArgumentParser, positional: bool = True) -> None:
    help_ = "alias (smollm2-135m, gemma3-270m), .gguf file, model folder or hub id"
    if positional:
        p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=help_ + f" (default {DEFAULT_MODEL})")
    else:
        p.add_argument("--model", default=DEFAULT_MODEL, help=help_)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def default_prior_path(model_name: str, source: str = "self", n_tokens: int = 16384) -> Path:
    """Where priors built on demand are cached."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(model_name).strip("/"))[-80:]
    src = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source).name)
    return cache_dir() / "priors" / f"{safe}-{src}-{n_tokens}.safetensors"
