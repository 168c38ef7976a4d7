"""The selection calibration stored with a prior (format version 2): what it holds and
how it is written into, and read back from, the prior's safetensors file.

* ``grid`` (G,) and ``profile`` (L, G): the sensitivity profile, the KL to the dense model
  per token when only block ``i`` keeps the fraction ``grid[g]`` of its neurons; the
  per-layer densities for any requested density are derived from it (``schedule``);
* ``windows`` (W,) and ``lam`` (L, W): the lam of each block for a prompt of ``windows[w]``
  tokens (``dispersion``), for rank fusion; ``score_lam`` (L, W) the same for score fusion;
* ``check_densities`` (C,), ``check_ratio`` (C,) and ``check_upper`` (C,) (format version 3):
  the schedule check, the KL of the allocated schedule over the KL of the uniform density
  (geometric mean over sampled rows, and the upper end of its 95% t interval), both with
  the full ``glass`` selection on samples of the model's own text; the schedule is used at
  a density only where the upper end is below 1 (``use_schedule``). Files of version 2 have
  no check: the schedule is then not used (a warning says to rebuild the prior);
* ``greedy_sums`` (L, d_ff) (format version 4): the statistic summed over text the model
  writes greedily after a short sampled start, ``meta["greedy_tokens"]`` tokens of it: the
  global view of ``glass`` and ``glass-greedy``, for replies decoded greedily (the
  ``greedy`` global source). Older files have none; it is computed when they are loaded
  for such a method (``calibration.ensure_calibrated``);
* ``greedy_mean`` (L, d_ff) (format version 5): the mean raw activation ``z`` of every
  neuron over the same greedy tokens, from which the compensated methods add back the mean
  output of the neurons they leave out (``compensation``). Format-4 files get it, with the
  greedy statistic recomputed, when a compensated method is applied.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from .dispersion import check_table
from .schedule import check_profile, checked_ratio

FORMAT_VERSION = 5
_KEYS = ("grid", "profile", "windows", "lam", "score_lam")
_CHECK_KEYS = ("check_densities", "check_ratio", "check_upper")  # format 3; absent in format-2 files
_GREEDY_KEYS = ("greedy_sums", "greedy_mean")  # formats 4 and 5
_PREFIX = "calibration."


@dataclass
class Calibration:
    grid: torch.Tensor
    profile: torch.Tensor
    windows: torch.Tensor
    lam: torch.Tensor
    score_lam: torch.Tensor
    meta: dict = field(default_factory=dict)
    check_densities: torch.Tensor | None = None
    check_ratio: torch.Tensor | None = None
    check_upper: torch.Tensor | None = None
    greedy_sums: torch.Tensor | None = None
    greedy_mean: torch.Tensor | None = None

    @property
    def format_version(self) -> int:
        """5 with the greedy statistic and mean activation, 4 with the statistic alone, 3
        with the schedule check only, 2 without either."""
        if self.check_ratio is None:
            return 2
        if self.greedy_sums is None:
            return 3
        return FORMAT_VERSION if self.greedy_mean is not None else 4

    @property
    def complete(self) -> bool:
        """Whether it holds everything this version computes (else ``ensure_calibrated`` adds it)."""
        return self.greedy_sums is not None and self.greedy_mean is not None

    @property
    def greedy_tokens(self) -> int:
        return int(self.meta.get("greedy_tokens", 0))

    @property
    def n_blocks(self) -> int:
        return int(self.profile.shape[0])

    def check(self, n_blocks: int) -> None:
        """Raise ``ValueError`` when the tables do not fit a model of ``n_blocks`` FFN blocks."""
        check_profile(self.profile, self.grid, n_blocks)
        check_table(self.lam, self.windows, n_blocks)
        check_table(self.score_lam, self.windows, n_blocks)
        present = [getattr(self, k) is not None for k in _CHECK_KEYS]
        if any(present) and not all(present):
            raise ValueError("the schedule check needs its densities, ratios and upper bounds together")
        if self.check_ratio is not None:
            d, r, u = self.check_densities, self.check_ratio, self.check_upper
            if d.dim() != 1 or r.shape != d.shape or u.shape != d.shape or d.numel() == 0:
                raise ValueError(f"the schedule check has densities of shape {tuple(d.shape)}, ratios of shape "
                                 f"{tuple(r.shape)} and bounds of shape {tuple(u.shape)}; expected vectors of one length")
            if (not bool(torch.isfinite(r).all() & (r > 0).all() & (u >= r).all())
                    or not bool((d[1:] > d[:-1]).all())):
                raise ValueError("the schedule check holds invalid values; rebuild the prior with `glass prior`")
        g = self.greedy_sums
        if g is not None:
            if g.dim() != 2 or g.shape[0] != n_blocks:
                raise ValueError(f"the greedy statistic has shape {tuple(g.shape)} but the model has {n_blocks} FFN "
                                 "blocks: it was measured on another model")
            if not bool(torch.isfinite(g).all() & (g >= 0).all()) or self.greedy_tokens < 1:
                raise ValueError("the greedy statistic holds invalid values or no token count; rebuild it with "
                                 "`glass prior MODEL --recalibrate`")
        m = self.greedy_mean
        if m is not None:
            if g is None or m.shape != g.shape:
                raise ValueError(f"the mean activation of greedy text has shape {tuple(m.shape)}, expected that of "
                                 f"the greedy statistic {None if g is None else tuple(g.shape)}: it was measured on "
                                 "another model, or the file is damaged; rebuild it with `glass prior MODEL --recalibrate`")
            if not bool(torch.isfinite(m).all()):
                raise ValueError("the mean activation of greedy text holds non-finite values; rebuild it with "
                                 "`glass prior MODEL --recalibrate`")

    def use_schedule(self, density: float) -> bool:
        """Whether the ``glass`` method allocates per-layer densities at ``density``: only where
        the schedule check measured it better than the uniform density with 95% confidence
        (the upper ends of the ratio's intervals, interpolated in density, below 1). A calibration without a
        check (format 2) does not use it, and warns."""
        if self.check_ratio is None:
            warnings.warn("this prior's calibration predates the schedule check (format 2), so the glass method "
                          "keeps one density for every layer; rebuild the prior with `glass prior MODEL` to check "
                          "and use the per-layer schedule", stacklevel=3)
            return False
        return checked_ratio(density, self.check_densities.tolist(), self.check_upper.tolist()) < 1.0

    def to_tensors(self) -> dict[str, torch.Tensor]:
        keys = _KEYS + (_CHECK_KEYS if self.check_ratio is not None else ())
        keys += tuple(k for k in _GREEDY_KEYS if getattr(self, k) is not None)
        return {_PREFIX + k: getattr(self, k).float().contiguous() for k in keys}

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
        checks = {k: tensors[_PREFIX + k].float() for k in _CHECK_KEYS + _GREEDY_KEYS if _PREFIX + k in tensors}
        cal = cls(**{k: tensors[_PREFIX + k].float() for k in _KEYS}, **checks, meta=dict(meta or {}))
        cal.check(cal.n_blocks)
        return cal

    def summary(self) -> list[str]:
        """Human-readable lines for ``glass prior --show``."""
        mid = int(torch.argmin((self.grid - 0.5).abs()))
        lines = [f"selection calibration: {self.n_blocks} blocks, sensitivity at densities "
                 f"{', '.join(f'{g:g}' for g in self.grid.tolist())}, lam for prompts of "
                 f"{', '.join(str(int(w)) for w in self.windows.tolist())} tokens"]
        if self.check_ratio is None:
            lines.append("schedule check: none (format 2): the glass method keeps one density per layer")
        else:
            pairs = ", ".join(f"{d:g}: {r:.3f} (<= {u:.3f})" for d, r, u in zip(
                self.check_densities.tolist(), self.check_ratio.tolist(), self.check_upper.tolist()))
            lines.append(f"schedule check, KL of the schedule / the uniform density on the model's own text, "
                         f"95% upper bound (used where the bound is below 1): {pairs}")
        if self.greedy_sums is None:
            lines.append("greedy statistic: none (format 3 or older): computed when a method that reads it is "
                         "applied; `glass prior MODEL --recalibrate` stores it")
        else:
            lines.append(f"greedy statistic: {self.greedy_tokens} tokens the model wrote greedily "
                         f"(the global view of glass and glass-greedy)")
            lines.append("mean activation of greedy text (the compensation of the *-comp methods): "
                         + ("none (format 4): computed when a compensated method is applied"
                            if self.greedy_mean is None else "stored"))
        for i in range(self.n_blocks):
            lam = " ".join(f"{v:.2f}" for v in self.lam[i].tolist())
            score = " ".join(f"{v:.2f}" for v in self.score_lam[i].tolist())
            lines.append(f"  block {i:3d}: KL at {self.grid[mid]:.3g} = {self.profile[i, mid]:.4f}; "
                         f"lam (ranks) {lam}; lam (scores) {score}")
        return lines
