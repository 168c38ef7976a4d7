"""Huge pages for the compact weights (memory.py): importing glass_llm asks PyTorch's CPU allocator for
them unless the environment says otherwise, and a large tensor then lands on them where the kernel allows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SCRIPT = ("import os, glass_llm\nfrom glass_llm.memory import huge_pages_active\n"
          "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), huge_pages_active())")


def _run(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _kernel_mode() -> str | None:
    try:
        text = THP_MODE.read_text()
    except OSError:
        return None
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else None


def test_importing_glass_llm_asks_for_huge_pages_and_a_large_tensor_gets_them():
    value, active = _run(None)
    assert value == "1"
    mode = _kernel_mode()
    if mode not in ("madvise", "always"):
        pytest.skip(f"the kernel's transparent huge pages are {mode!r}")
    assert active == "True"


def test_an_explicit_setting_is_kept():
    value, active = _run("0")
    assert value == "0"
    if _kernel_mode() == "madvise":  # with "always" the kernel gives huge pages whatever torch asks
        assert active == "False"
