"""The ``glass`` command line. Each subcommand lives in ``glass_llm.commands.<name>``
and exposes ``register(subparsers)``, which adds its parser and sets ``func``."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

COMMANDS = ("demo", "prior", "generate", "eval", "bench", "lm_eval")


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glass", description="GLASS: faster generation by sparse FFNs, no training.")
    parser.add_argument("--version", action="version", version=f"glass-llm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"glass_llm.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"glass_llm.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, RuntimeError, OSError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"glass {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
