"""Run one parsed ``glass`` subcommand and report its errors: the single error path of
the command line and of the workers of a multi-process run (``distributed``).

* A user error (:func:`is_user_error`: bad arguments, files or models) is one line on
  stderr, ``glass COMMAND: error: MESSAGE``, and exit status 2.
* Anything else is a bug (a shape or device error from torch, say): its traceback is
  printed with a request to report it, and the exit status is 1.
* ``--debug`` re-raises every error, so the traceback of a user error can be seen too.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from .errors import UserError

# bad paths the user named; other OSErrors (a full disk, a broken pipe) are not the user's input
_USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

BUG_HINT = ("this is a bug in glass-llm, not a problem with your input: please report it with the "
            "command line and the traceback above")


def is_user_error(err: BaseException) -> bool:
    """True for errors the user can fix: :class:`UserError` (and the project exceptions
    that inherit it), ``ValueError`` and its subclasses, and a missing or unreadable path."""
    return isinstance(err, (UserError, ValueError, *_USER_OS_ERRORS))


def run_command(args: argparse.Namespace, where: str = "") -> int:
    """Run ``args.func(args)`` and return the exit status: 0 (or what ``func`` returns)
    on success, 2 for a user error, 1 for an internal error, 130 on Ctrl-C.

    ``where`` is appended to the command name in messages, e.g. ``" (rank 1)"``.
    """
    name = f"glass {getattr(args, 'command', '?')}{where}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left early (`glass ... | head`): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as err:  # noqa: BLE001 - every error is reported, by kind
        if getattr(args, "debug", False):
            raise
        if is_user_error(err):
            print(f"{name}: error: {err}", file=sys.stderr)
            return 2
        traceback.print_exc(file=sys.stderr)
        print(f"{name}: internal error ({type(err).__name__}): {BUG_HINT}", file=sys.stderr)
        return 1
