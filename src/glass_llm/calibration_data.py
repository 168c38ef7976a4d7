"""The selection calibration stored with a prior (format version 2): what it holds and
how it is written into, and read back from, the prior's safetensors file.

* ``grid`` (G,) and ``profile`` (L, G): the sensitivity profile, the KL to the dense model
  per token when only block ``i`` keeps the fraction ``grid[g]`` of its neurons; the
  per-layer densities for any requested density are derived from it (``schedule``);
* ``windows`` (W,) and ``lam`` (L, W): the lam of each block for a prompt of ``windows[w]``
  tokens (``dispersion``), for rank fusion; ``score_lam`` (L, W) the same for score fusion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .dispersion import check_table
from .schedule import check_profile

FORMAT_VERSION = 2
_KEYS = ("grid", "profile", "windows", "lam", "score_lam")
_PREFIX = "calibration."


@dataclass
class Calibration:
    grid: torch.Tensor
    profile: torch.Tensor
    windows: torch.Tensor
    lam: torch.Tensor
    score_lam: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return int(self.profile.shape[0])

    def check(self, n_blocks: int) -> None:
        """Raise ``ValueError`` when the tables do not fit a model of ``n_blocks`` FFN blocks."""
        check_profile(self.profile, self.grid, n_blocks)
        check_table(self.lam, self.windows, n_blocks)
        check_table(self.score_lam, self.windows, n_blocks)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {_PREFIX + k: getattr(self, k).float().contiguous() for k in _KEYS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict | None) -> "Calibration | None":
        """The calibration in a prior file's tensors, or None when the file has none
        (format version 1)."""
        present = [k for k in _KEYS if _PREFIX + k in tensors]
        if not present:
            return None
        if len(present) != len(_KEYS):
            missing = sorted(set(_KEYS) - set(present))
            raise ValueError(f"the prior's selection calibration is incomplete (missing {', '.join(missing)})")
        cal = cls(**{k: tensors[_PREFIX + k].float() for k in _KEYS}, meta=dict(meta or {}))
        cal.check(cal.n_blocks)
        return cal

    def summary(self) -> list[str]:
        """Human-readable lines for ``glass prior --show``."""
        mid = int(torch.argmin((self.grid - 0.5).abs()))
        lines = [f"selection calibration: {self.n_blocks} blocks, sensitivity at densities "
                 f"{', '.join(f'{g:g}' for g in self.grid.tolist())}, lam for prompts of "
                 f"{', '.join(str(int(w)) for w in self.windows.tolist())} tokens"]
        for i in range(self.n_blocks):
            lam = " ".join(f"{v:.2f}" for v in self.lam[i].tolist())
            score = " ".join(f"{v:.2f}" for v in self.score_lam[i].tolist())
            lines.append(f"  block {i:3d}: KL at {self.grid[mid]:.3g} = {self.profile[i, mid]:.4f}; "
                         f"lam (ranks) {lam}; lam (scores) {score}")
        return lines
