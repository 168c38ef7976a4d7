"""The marker for errors the user can fix.

A ``UserError`` (bad arguments, a missing or mismatched file, a model that is not
available) is reported by the command line as one line on stderr with exit status 2.
Any other exception is a bug: the command line prints its traceback and exits 1.
Project exceptions that describe bad input inherit from ``UserError`` in addition to
their historical base (``ValueError`` or ``RuntimeError``), so ``except`` clauses that
catch the old base keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


class GlassError(RuntimeError, UserError):
    """GLASS cannot run in the requested way."""
