"""glass-llm: training-free FFN sparsification for faster generation (GLASS)."""

from .version import __version__
from .memory import request_huge_pages

request_huge_pages()  # before torch allocates anything (memory.py)

from .adapters import UnsupportedModelError, find_ffn_blocks  # noqa: E402
from .config import equal_work_density  # noqa: E402
from .engine import GlassConfig, GlassError, GlassHandle, apply_glass  # noqa: E402
from .methods import METHODS, MethodSpec, register_method  # noqa: E402
from .prior import Prior, PriorError, load_prior, save_prior  # noqa: E402
from .build import build_prior  # noqa: E402
from .models import load_model  # noqa: E402

__all__ = [
    "GlassConfig", "GlassError", "GlassHandle", "apply_glass", "UnsupportedModelError", "find_ffn_blocks",
    "METHODS", "MethodSpec", "register_method", "Prior", "PriorError", "load_prior", "save_prior",
    "build_prior", "load_model", "equal_work_density", "__version__",
]
