"""Fidelity evaluation; the code lives in the ``glass_llm.evaluation`` subpackage. This
module keeps the historical import path ``glass_llm.evaluate`` working."""

from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__  # noqa: F401
from .io import atomic_write  # noqa: F401  (historical location)
