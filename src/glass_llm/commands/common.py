"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from ..models import DEFAULT_MODEL
from ..prior_cache import DEFAULT_PRIOR_TOKENS


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
    p.add_argument("--device", default="auto",
                   help="auto (default: CUDA when available, else CPU), cpu, cuda or cuda:K")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default auto: bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="'auto' spreads a model too big for one device over all visible devices")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_prior_tokens_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior-tokens", type=int, default=DEFAULT_PRIOR_TOKENS,
                   help="use a cached prior of at least this many tokens, or build one "
                        f"(default {DEFAULT_PRIOR_TOKENS}, the default prior every command shares)")


def add_refresh_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refresh", type=int, default=None, metavar="R",
                   help="re-select the neurons every R generated tokens from the prompt and the tokens "
                        "generated so far (0: off; default: the method's own setting, off except for "
                        "*-refresh methods); not with --compile")
    p.add_argument("--refresh-growth", type=float, default=None, metavar="G",
                   help="each interval between re-selections is G times the one before (1: every R tokens; "
                        "2: after R, 2R, 4R, ... more tokens; default: the method's own setting)")
    p.add_argument("--refresh-halflife", type=float, default=None, metavar="H",
                   help="at a re-selection, a generated token's weight halves every H tokens after it "
                        "(0: every token weighs the same; default: the method's own setting)")
    p.add_argument("--schedule-halflife", type=float, default=None, metavar="H",
                   help="with a per-layer density, each re-selection keeps 2^(-g/H) of its departure from one "
                        "density for all, g the tokens generated (0: keep the per-layer density; default: the "
                        "method's own setting, 64 for the *-fade methods)")
    p.add_argument("--dense-start", type=int, default=None, metavar="W",
                   help="decode the first W generated tokens with the dense model and choose the neurons from "
                        "the prompt plus them (0: right after the prompt; default: the method's own setting); "
                        "not with --compile")
    p.add_argument("--comp-tokens", type=float, default=None, metavar="N",
                   help="for a compensated method: the mean added back for the neurons left out follows the "
                        "generated tokens, the prior's mean counting as N more tokens (0: the prior's mean alone; "
                        "default: the method's own setting)")
    p.add_argument("--linear-blocks", type=int, default=None, metavar="N",
                   help="for glass-linear and glass-refresh-linear: predict the neurons left out in the N blocks of "
                        "largest loss on greedy replies only, adding back their mean in the others (each block's "
                        "prediction costs a solve per selection; 0: every block, the default)")


def add_loop_guard_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loop-guard", type=int, default=0, metavar="K",
                   help="when the reply repeats a 4-gram it already wrote, decode that step and the next K-1 with "
                        "the dense FFNs (0: off; greedy replies at low density loop far less, at the cost of the "
                        "dense steps; not with --compile or --num-beams)")


def decode_options(args) -> dict:
    """The ``GlassConfig`` (and ``BenchSettings``) fields that ``add_refresh_arg`` sets."""
    return {"refresh": args.refresh, "refresh_growth": args.refresh_growth, "refresh_halflife": args.refresh_halflife,
            "schedule_halflife": args.schedule_halflife, "dense_start": args.dense_start,
            "comp_tokens": args.comp_tokens, "linear_blocks": args.linear_blocks}


def check_refresh_compile(args, refresh_every: int, dense_start: int = 0) -> None:
    """Mask refresh and a dense start change the neuron sets between decode steps in Python:
    not inside a compiled step."""
    if getattr(args, "compile", False) and refresh_every:
        raise ValueError("mask refresh (--refresh, or a *-refresh method) cannot be combined with --compile: "
                         "it re-selects between decode steps; drop --compile or pass --refresh 0")
    if getattr(args, "compile", False) and dense_start:
        raise ValueError("a dense start (--dense-start, or a method with one) cannot be combined with --compile: "
                         "it selects after the first decode steps; drop --compile or pass --dense-start 0")


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="compile the decode step (static KV cache; CUDA graphs on a GPU); the first request "
                        "pays the compile time, later ones of the same density reuse it")
    p.add_argument("--max-cache-len", type=int, default=None,
                   help="static KV cache length with --compile (default: prompt + new tokens, rounded up to 256)")


def compile_generate_kwargs(args: argparse.Namespace, model, needed: int) -> dict:
    """``generate`` kwargs for ``--compile`` (empty without it); ``needed`` = prompt + new tokens."""
    if not getattr(args, "compile", False):
        return {}
    from ..decode import compile_kwargs

    length = args.max_cache_len or -(-needed // 256) * 256
    if length < needed:
        raise ValueError(f"--max-cache-len {length} is shorter than prompt + new tokens ({needed})")
    return compile_kwargs(model, max_cache_len=length)


def add_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="float", choices=["float", "int8"],
                   help="float (default: the model's own weights) or int8: every linear projection in int8 with one "
                        "scale per output channel, the sparse FFN weights sliced from them")


def model_kwargs(args: argparse.Namespace, device: str | None = None) -> dict:
    """The load_model keyword arguments of a command's --device/--dtype/--device-map."""
    return {"dtype": args.dtype, "device": device or args.device, "device_map": args.device_map}

