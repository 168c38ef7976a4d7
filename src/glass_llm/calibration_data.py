"""The selection calibration stored with a prior: what it holds and how it is written into, and read back from, the
prior's safetensors file.

* ``grid`` (G,) and ``profile`` (L, G): the sensitivity profile, the KL to the dense model per token when only block
  ``i`` keeps the fraction ``grid[g]`` of its neurons; the per-layer densities for any requested density are derived
  from it (``schedule``);
* ``windows`` (W,) and ``lam`` (L, W): the lam of each block for a prompt of ``windows[w]`` tokens (``dispersion``),
  for rank fusion; ``score_lam`` (L, W) the same for score fusion;
* ``check_densities`` (C,), ``check_ratio`` (C,) and ``check_upper`` (C,) (format version 3): the schedule check, the
  KL of the allocated schedule over the KL of the uniform density (geometric mean over sampled rows, and the upper end
  of its 95% t interval), both with the full ``glass`` selection on samples of the model's own text; the schedule is
  used at a density only where the upper end is below 1 (``use_schedule``). Files of version 2 have no check: the
  schedule is then not used (a warning says to rebuild the prior);
* ``greedy_sums`` (L, d_ff) (format version 4): the statistic summed over text the model writes greedily after a short
  sampled start, ``meta["greedy_tokens"]`` tokens of it: the global view of ``glass`` and ``glass-greedy``, for
  replies decoded greedily (the ``greedy`` global source). Older files have none; it is computed when they are loaded
  for such a method (``calibration.ensure_calibrated``);
* ``greedy_mean`` (L, d_ff) (format version 5): the mean raw activation ``z`` of every neuron over the same greedy
  tokens, from which the compensated methods add back the mean output of the neurons they leave out
  (``compensation``). Format-4 files get it, with the greedy statistic recomputed, when a compensated method is
  applied.
* ``lam_check_lams`` (C,), ``lam_check_ratio`` (C,) and ``lam_check_upper`` (C,) (format version 6): the short-prompt
  lam check (``lam_choice``), the KL of ``glass`` at each candidate lam over its KL at lam 0.5 for 8-token prompts of
  the model's own text (geometric mean over rows, and the upper end of its 95% t interval). ``short_lam`` is the
  candidate with the lowest ratio among those whose upper end is below 1, else 0.5: ``glass`` fuses at that lam up to
  8 prompt tokens and at 0.5 from 32. Older files have no check: ``glass`` then fuses at 0.5 for every length (a
  cached prior gets the check when it is next loaded; a named file with ``--recalibrate``).
* ``reply_loss`` (L,), ``reply_check_densities`` (C,), ``reply_check_ratio`` (C,) and ``reply_check_upper`` (C,)
  (format version 7): the schedule measured on greedy replies (``reply_schedule``): per block, the KL to the dense
  model when only that block runs at density 0.5 on replies the model wrote greedily; ``reply_profile`` is ``profile``
  with each block's row rescaled to it. The check: KL of ``glass`` with the schedule of ``reply_profile`` over its KL
  at one density for all, per density; ``glass`` uses that schedule where the upper end of the interval is below 1
  (``use_reply_schedule``).
* ``bank_sums`` (R, L, d_ff, stored as float16) and ``bank_tokens`` (R,) (format version 8): each greedy reply's own
  sums of ``u^2`` and token count (``greedy_text.greedy_bank``), from which the ``glass-neighbours`` method takes the
  global view of the replies nearest to the prompt (``neighbours``). Older files have none: it is sampled when such a
  method is applied (a cached prior keeps it; a named file with ``--recalibrate``).
* ``neighbours_check`` (2,) (format version 9): the nearest-replies check (``neighbours_check``), the KL of
  ``glass-neighbours`` over that of ``glass`` with the one prior on 8-token prompts of the model's own text (geometric
  mean over rows) and the upper end of its 95% t interval; ``glass`` takes its global view from the nearest replies
  where that upper end is below 1 (``use_neighbours``). Older files have no check: ``glass`` then fuses with the one
  prior.
* ``lin_cov`` (L, d_ff, d_ff) and ``lin_mean`` (L, d_ff) (format version 10; stored as ``lincomp.split_covariance``):
  each block's activation covariance and mean on the bank's greedy replies, what ``glass-linear`` predicts the neurons
  it leaves out from. Older files have none: they are measured when that method is applied."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from .dispersion import check_table
from .lincomp import check_covariance, join_covariance, split_covariance
from .schedule import check_profile, checked_ratio

FORMAT_VERSION = 10
_KEYS = ("grid", "profile", "windows", "lam", "score_lam")
_CHECK_KEYS = ("check_densities", "check_ratio", "check_upper")  # format 3; absent in format-2 files
_GREEDY_KEYS = ("greedy_sums", "greedy_mean")  # formats 4 and 5
_LAM_KEYS = ("lam_check_lams", "lam_check_ratio", "lam_check_upper")  # format 6
_REPLY_KEYS = ("reply_loss", "reply_check_densities", "reply_check_ratio", "reply_check_upper")  # format 7
_BANK_KEYS = ("bank_sums", "bank_tokens")  # format 8
_NEIGHBOURS_KEYS = ("neighbours_check",)  # format 9
REPLY_DENSITY = 0.5  # the density at which each block's loss on greedy replies is measured
NEUTRAL_LAM = 0.5  # the short-prompt lam without a check, or when no candidate beat it
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
    lam_check_lams: torch.Tensor | None = None
    lam_check_ratio: torch.Tensor | None = None
    lam_check_upper: torch.Tensor | None = None
    reply_loss: torch.Tensor | None = None
    reply_check_densities: torch.Tensor | None = None
    reply_check_ratio: torch.Tensor | None = None
    reply_check_upper: torch.Tensor | None = None
    bank_sums: torch.Tensor | None = None
    bank_tokens: torch.Tensor | None = None
    neighbours_check: torch.Tensor | None = None
    lin_cov: torch.Tensor | None = None
    lin_mean: torch.Tensor | None = None
    # block counts ``check`` passed, as every apply_glass checks (``replace`` gives a new, unchecked calibration)
    _checked: set = field(default_factory=set, init=False, repr=False, compare=False)

    @property
    def format_version(self) -> int:
        """10 with the activation covariance, 9 with the nearest-replies check, 8 with each greedy reply's own statistic, 7 with the
        schedule measured on greedy replies, 6 with the short-prompt lam check, 5 with the greedy
        statistic and mean activation, 4 with the statistic alone, 3 with the schedule check only,
        2 without either."""
        if self.check_ratio is None:
            return 2
        if self.greedy_sums is None:
            return 3
        if self.greedy_mean is None:
            return 4
        if self.lam_check_ratio is None:
            return 5
        if self.reply_loss is None:
            return 6
        if self.bank_sums is None:
            return 7
        if self.neighbours_check is None:
            return 8
        return FORMAT_VERSION if self.lin_cov is not None else 9

    @property
    def use_neighbours(self) -> bool:
        """Whether ``glass`` takes its global view from the greedy replies nearest to the prompt: only
        where its check measured that better than the one prior with 95% confidence (format 9)."""
        return self.neighbours_check is not None and float(self.neighbours_check[1]) < 1.0

    @property
    def reply_profile(self) -> torch.Tensor | None:
        """``profile`` with each block's row rescaled so that its value at ``REPLY_DENSITY`` is the
        block's loss on greedy replies (the shape of its error curve kept); None without the check."""
        if self.reply_loss is None:
            return None
        g = int((self.grid - REPLY_DENSITY).abs().argmin())
        scale = self.reply_loss.clamp_min(1e-9) / self.profile[:, g].clamp_min(1e-9)
        return self.profile * scale.unsqueeze(1)

    def use_reply_schedule(self, density: float) -> bool:
        """Whether ``glass`` allocates per-layer densities at ``density``: only where
        its check on greedy replies measured the schedule better than one density with 95% confidence."""
        if self.reply_check_ratio is None:
            return False
        return checked_ratio(density, self.reply_check_densities.tolist(), self.reply_check_upper.tolist()) < 1.0

    @property
    def short_lam(self) -> float | None:
        """The lam of ``glass`` for prompts of up to 8 tokens: the checked candidate with the
        lowest KL ratio among those measured better than lam 0.5 with 95% confidence, else 0.5;
        ``None`` without a check (format 5 or older)."""
        if self.lam_check_ratio is None:
            return None
        better = [(r, lam) for lam, r, u in zip(self.lam_check_lams.tolist(), self.lam_check_ratio.tolist(),
                                                 self.lam_check_upper.tolist()) if u < 1.0]
        return round(min(better)[1], 6) if better else NEUTRAL_LAM  # stored as float32

    @property
    def complete(self) -> bool:
        """Whether it holds everything ``ensure_calibrated`` can add (the short-prompt lam check,
        which runs the engine, is added by ``build``: ``short_lam`` is None without it)."""
        return self.greedy_sums is not None and self.greedy_mean is not None

    @property
    def greedy_tokens(self) -> int:
        return int(self.meta.get("greedy_tokens", 0))

    @property
    def n_blocks(self) -> int:
        return int(self.profile.shape[0])

    def check(self, n_blocks: int) -> None:
        """Raise ``ValueError`` when the tables do not fit a model of ``n_blocks`` FFN blocks."""
        if n_blocks in self._checked:
            return
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
        present = [getattr(self, k) is not None for k in _LAM_KEYS]
        if any(present) and not all(present):
            raise ValueError("the short-prompt lam check needs its lams, ratios and upper bounds together")
        if self.lam_check_ratio is not None:
            lams, r, u = self.lam_check_lams, self.lam_check_ratio, self.lam_check_upper
            if (lams.dim() != 1 or r.shape != lams.shape or u.shape != lams.shape
                    or not bool(((lams > 0) & (lams < 1)).all() & torch.isfinite(r).all() & (r > 0).all()
                                & (u >= r).all())):
                raise ValueError("the short-prompt lam check holds invalid values; rebuild it with "
                                 "`glass prior MODEL --recalibrate`")
        present = [getattr(self, k) is not None for k in _REPLY_KEYS]
        if any(present) and not all(present):
            raise ValueError("the schedule of greedy replies needs its losses, densities, ratios and upper bounds together")
        if self.reply_loss is not None:
            loss, d, r, u = (self.reply_loss, self.reply_check_densities, self.reply_check_ratio,
                             self.reply_check_upper)
            if (loss.shape != (n_blocks,) or d.dim() != 1 or r.shape != d.shape or u.shape != d.shape
                    or d.numel() == 0 or not bool(torch.isfinite(loss).all() & (loss >= 0).all()
                                                  & torch.isfinite(r).all() & (r > 0).all() & (u >= r).all())):
                raise ValueError(f"the schedule of greedy replies does not fit a model of {n_blocks} FFN blocks or "
                                 "holds invalid values; rebuild it with `glass prior MODEL --recalibrate`")
        present = [getattr(self, k) is not None for k in _BANK_KEYS]
        if any(present) and not all(present):
            raise ValueError("the bank of greedy replies needs its sums and token counts together")
        if self.bank_sums is not None:
            b, t = self.bank_sums, self.bank_tokens
            if (b.dim() != 3 or b.shape[1] != n_blocks or (g is not None and b.shape[2] != g.shape[1])
                    or t.shape != (b.shape[0],) or b.shape[0] == 0):
                raise ValueError(f"the bank of greedy replies has shape {tuple(b.shape)} with {tuple(t.shape)} token "
                                 f"counts, which does not fit a model of {n_blocks} FFN blocks: it was measured on "
                                 "another model, or the file is damaged; rebuild it with `glass prior MODEL --recalibrate`")
            if not bool(torch.isfinite(b).all() & (b >= 0).all() & (t > 0).all()):
                raise ValueError("the bank of greedy replies holds invalid values; rebuild it with "
                                 "`glass prior MODEL --recalibrate`")
        c = self.neighbours_check
        if c is not None and (c.shape != (2,) or self.bank_sums is None or not math.isfinite(float(c[0]))
                              or float(c[0]) <= 0 or float(c[1]) < float(c[0])):
            raise ValueError("the nearest-replies check holds invalid values or has no bank of replies; rebuild it "
                             "with `glass prior MODEL --recalibrate`")
        if self.lin_cov is not None or self.lin_mean is not None:
            check_covariance(self.lin_cov, self.lin_mean, n_blocks, None if g is None else g.shape[1])
        m = self.greedy_mean
        if m is not None:
            if g is None or m.shape != g.shape:
                raise ValueError(f"the mean activation of greedy text has shape {tuple(m.shape)}, expected that of "
                                 f"the greedy statistic {None if g is None else tuple(g.shape)}: it was measured on "
                                 "another model, or the file is damaged; rebuild it with `glass prior MODEL --recalibrate`")
            if not bool(torch.isfinite(m).all()):
                raise ValueError("the mean activation of greedy text holds non-finite values; rebuild it with "
                                 "`glass prior MODEL --recalibrate`")
        self._checked.add(n_blocks)

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
        keys += tuple(k for k in _GREEDY_KEYS + _LAM_KEYS + _REPLY_KEYS + _BANK_KEYS + _NEIGHBOURS_KEYS
                      + ("lin_mean",) if getattr(self, k) is not None)
        # the bank in half precision, which its ranks need; the covariance as lincomp.split_covariance
        out = {_PREFIX + k: (getattr(self, k).half() if k == "bank_sums" else getattr(self, k).float()).contiguous()
               for k in keys}
        if self.lin_cov is not None:
            out[_PREFIX + "lin_corr"], out[_PREFIX + "lin_std"] = split_covariance(self.lin_cov)
        return out

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
        checks = {k: tensors[_PREFIX + k].float() for k in _CHECK_KEYS + _GREEDY_KEYS + _LAM_KEYS
                  + _REPLY_KEYS + _BANK_KEYS + _NEIGHBOURS_KEYS + ("lin_mean",) if _PREFIX + k in tensors}
        if _PREFIX + "lin_corr" in tensors:
            checks["lin_cov"] = join_covariance(tensors[_PREFIX + "lin_corr"], tensors.get(_PREFIX + "lin_std"))
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
        if self.lam_check_ratio is None:
            lines.append("short-prompt lam check: none (format 5 or older): glass fuses at lam 0.5 for every prompt "
                         "length; `glass prior MODEL --recalibrate` adds it")
        else:
            pairs = ", ".join(f"{lam:g}: {r:.3f} (<= {u:.3f})" for lam, r, u in zip(
                self.lam_check_lams.tolist(), self.lam_check_ratio.tolist(), self.lam_check_upper.tolist()))
            chosen = ("at lam 0.5 for every prompt length" if self.short_lam == NEUTRAL_LAM else
                      f"at lam {self.short_lam:g} up to 8 prompt tokens and 0.5 from 32")
            lines.append(f"short-prompt lam check, KL of glass at lam / at lam 0.5 on 8-token prompts of the model's "
                         f"own text, 95% upper bound: {pairs}; glass fuses {chosen}")
        if self.reply_loss is None:
            lines.append("schedule of greedy replies: none (format 6 or older): glass allocates from the stored "
                         "profile until `glass prior MODEL --recalibrate` adds it")
        else:
            pairs = ", ".join(f"{d:g}: {r:.3f} (<= {u:.3f})" for d, r, u in zip(
                self.reply_check_densities.tolist(), self.reply_check_ratio.tolist(),
                self.reply_check_upper.tolist()))
            lines.append(f"schedule of greedy replies, KL of glass with it / at one density on the model's greedy "
                         f"replies, 95% upper bound (glass uses it where the bound is below 1): {pairs}")
            lines.append("  loss per block at 0.5 on greedy replies: "
                         + " ".join(f"{v:.3f}" for v in self.reply_loss.tolist()))
        lines.append("greedy replies kept one by one (the global view of glass-neighbours): "
                     + ("none (format 7 or older): sampled when glass-neighbours is applied; `glass prior MODEL "
                        "--recalibrate` stores them" if self.bank_sums is None else
                        f"{self.bank_sums.shape[0]} replies, {int(self.bank_tokens.sum())} tokens"))
        if self.neighbours_check is not None:
            r, u = self.neighbours_check.tolist()
            lines.append(f"nearest-replies check, KL of glass-neighbours / glass with the one prior on 8-token prompts "
                         f"of the model's own text: {r:.3f} (<= {u:.3f}); glass fuses with "
                         + ("the nearest replies" if self.use_neighbours else "the one prior"))
        lines.append("activation covariance of greedy replies (read by glass-linear): " + (
            "none (format 9 or older): measured when glass-linear is applied" if self.lin_cov is None
            else f"{int(self.meta.get('lin_tokens', 0))} tokens"))
        for i in range(self.n_blocks):
            lam = " ".join(f"{v:.2f}" for v in self.lam[i].tolist())
            score = " ".join(f"{v:.2f}" for v in self.score_lam[i].tolist())
            lines.append(f"  block {i:3d}: KL at {self.grid[mid]:.3g} = {self.profile[i, mid]:.4f}; "
                         f"lam (ranks) {lam}; lam (scores) {score}")
        return lines
