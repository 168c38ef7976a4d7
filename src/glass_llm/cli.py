"""The ``glass`` command line. Each subcommand lives in ``glass_llm.commands.<name>``
and exposes ``register(subparsers)``, which adds its parser and sets ``func``; errors are
reported by ``glass_llm.runner.run_command`` (one line and exit 2 for user errors, a
traceback and exit 1 for bugs)."""

from __future__ import annotations

import argparse
import importlib

from .version import __version__
from .errors import UserError
from .runner import run_command

__all__ = ["CLIError", "build_parser", "main", "run_command"]

COMMANDS = ("demo", "prior", "generate", "eval", "bench", "lm_eval", "serve")


class CLIError(UserError):
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
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
