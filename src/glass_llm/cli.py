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
    return run_command(parser.parse_args(argv))


def run_command(args: argparse.Namespace, where: str = "", report_any: bool = False) -> int:
    """Run a parsed subcommand; user-facing errors become one line on stderr and exit 2.

    ``where`` is appended to the command name (e.g. " (rank 1)"); ``report_any`` also
    turns unexpected exceptions into that line (a distributed worker must report and
    exit non-zero). ``--debug`` re-raises instead.
    """
    errors: tuple[type[BaseException], ...] = (Exception,) if report_any else (CLIError, ValueError, RuntimeError, OSError)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"interrupted{where}", file=sys.stderr)
        return 130
    except errors as err:
        if getattr(args, "debug", False):
            raise
        known = isinstance(err, (CLIError, ValueError, RuntimeError, OSError))
        detail = str(err) if known else f"{type(err).__name__}: {err}"
        print(f"glass {args.command}{where}: error: {detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
