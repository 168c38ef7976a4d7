"""CPU memory for the compact weights: transparent huge pages.

Each selection writes the kept neurons' weights into buffers of its own (159 MB for SmolLM2-135M
at density 0.5 in float32). On Linux the first write to fresh memory pays a page fault per 4 KB
page: about 39,000 faults for those buffers, a third or more of ``glass``'s selection time on a
2-core CPU (BENCHMARKS.md, "Huge pages for the compact weights"). PyTorch's CPU allocator can place allocations of 2 MB or more on
transparent huge pages, one fault per 2 MB, when the environment variable
``THP_MEM_ALLOC_ENABLE`` is 1. It reads the variable once, at the process's first allocation of
that size, so it has to be set before anything large is allocated.

Importing ``glass_llm`` sets it (``request_huge_pages``) unless it is already set: the ``glass``
command and any program that imports ``glass_llm`` before it loads a model get huge pages. A
program that loads its model first exports ``THP_MEM_ALLOC_ENABLE=1`` itself;
``THP_MEM_ALLOC_ENABLE=0`` keeps 4 KB pages. The kernel decides in the end: with
``/sys/kernel/mm/transparent_hugepage/enabled`` at ``never`` nothing changes.
``huge_pages_active`` says what the running process gets.

No torch at import: this module runs before torch is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "THP_MEM_ALLOC_ENABLE"
_SMAPS = Path("/proc/self/smaps")


def request_huge_pages() -> None:
    """Ask PyTorch's CPU allocator for huge pages, unless the environment already says otherwise."""
    os.environ.setdefault(ENV, "1")


def anon_huge_kb(address: int) -> int | None:
    """Kilobytes on huge pages in the mapping that holds ``address``; None where /proc does not say."""
    try:
        lines = _SMAPS.read_text().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ..."
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return None


def huge_pages_active() -> bool | None:
    """Whether a large CPU tensor allocated now lands on huge pages (allocates, fills and frees 64 MB and
    reads the kernel's account of its mapping); None where the system does not say (no
    ``/proc/self/smaps``). Ask early in a process: later the C library may hand the probe memory that
    was already touched in 4 KB pages, and the answer is then no whatever the allocator would do."""
    import torch

    probe = torch.ones(64 << 20, dtype=torch.uint8)
    kb = anon_huge_kb(probe.data_ptr())
    del probe
    return None if kb is None else kb > 0
