"""What ``apply_glass`` applies: one frozen dataclass, validated in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import options
from .guard import check_loop_guard
from .methods import DEFAULT_LAM, MethodSpec, get_method
from .quant import check_weights
from .ranking import check_density, check_lam
from .stats import STATISTICS

PATHS = ("sliced", "masked")


def refresh_interval(every: int, growth: float, n: int) -> int:
    """Generated tokens between selection ``n`` (0: the prompt's) and the next one:
    ``every * growth ** n``, rounded, at least 1; 0 when refresh is off (``every`` 0)."""
    return max(1, round(every * growth ** n)) if every else 0


def equal_work_density(density: float, dense_start: int, gen_tokens: int) -> float:
    """The density of the sparse decode steps that, after ``dense_start`` dense ones, does the
    same FFN work over a reply of ``gen_tokens`` tokens (``gen_tokens - 1`` decode steps; the
    first token comes from the prefill) as ``density`` throughout."""
    steps = gen_tokens - 1
    if dense_start < 0 or steps < 1:
        raise ValueError(f"need dense_start >= 0 and gen_tokens >= 2, got {dense_start} and {gen_tokens}")
    if dense_start >= density * steps:
        raise ValueError(f"a dense start of {dense_start} tokens alone does more FFN work than density {density:g} "
                         f"over {gen_tokens} tokens; use a shorter dense start or a longer reply")
    return (density * steps - dense_start) / (steps - dense_start)


@dataclass(frozen=True)
class GlassConfig:
    """What to apply. ``lam``/``statistic`` default to the method's own settings.

    density: one fraction for every FFN block, or a sequence with one per block. For
    ``glass`` one fraction is the mean over blocks (weighted by size), spread across them by
    each block's loss on greedy replies stored with the prior; a sequence overrides that schedule.
    lam: the prompt ranking's weight. For the methods with an adaptive lam (``glass-refresh``)
    the prior's calibration sets it per block and token count, and ``lam`` shifts those in
    log-odds (0.5 keeps them).
    path: "sliced" (physically smaller weights, the fast path) or "masked" (unselected
    neurons zeroed, the reference path). share_batch: one neuron set for the whole batch,
    chosen from the rows' combined statistic (faster decode for large batches).
    refresh: re-select every ``refresh`` generated tokens from the prompt's statistic plus
    the generated tokens' own (recomputed densely from their kept FFN inputs), fused with
    the prior as at the first selection; None keeps the method's setting, 0 is off.
    refresh_growth: each interval between re-selections is this many times the one before
    (1: every ``refresh`` tokens; 2: after R, 2R, 4R, ... more tokens); None keeps the method's.
    refresh_halflife: at a re-selection, a token's share of the local statistic halves every
    this many generated tokens after it (recent text counts more; ``stats.recency_weights``);
    0 sums every token seen with equal weight; None keeps the method's.
    prompt_halflife: a prompt token's weight in the local statistic halves every this many
    tokens before the prompt's last one (the prompt's end counts more; ``stats.recency_weights``);
    0 weighs every prompt token the same; None keeps the method's.
    dense_start: the first ``dense_start`` generated tokens go through the dense model, and
    their statistic joins the prompt's before the first selection (as if the prompt were
    that much longer); 0 selects right after the prefill; None keeps the method's.
    schedule_halflife: for a method with a per-layer schedule that refreshes, each re-selection
    keeps ``w = 2 ** (-g / schedule_halflife)`` of the schedule's departure from one density for
    all, ``g`` the tokens generated since the first selection (``schedule.blend``; the total
    stays the budget); 0 keeps the schedule throughout; None keeps the method's.
    comp_tokens: for a compensated method (``glass``, ``*-comp``), the mean activation added back for the
    neurons left out follows the generated tokens (the dense start's, then at each re-selection
    the reply's so far, weighted as in the local statistic), with the prior's mean counted as
    this many more tokens; 0 keeps the prior's mean; None keeps the method's.
    ridge: for a method that predicts the neurons it leaves out from those it keeps (``glass-linear``,
    ``lincomp``), the ridge added to the kept neurons' covariance, in units of their mean variance
    (larger shrinks the prediction toward their mean); None keeps the default.
    linear_blocks: for such a method, predict in this many blocks only, those with the largest loss on greedy
    replies stored with the prior, and add back the left-out neurons' mean in the others (each block's
    prediction is one solve per selection); 0 predicts in every block; None keeps the method's.
    weights: "float" (the model's own) or "int8": every linear projection in int8 with one
    scale per output channel (``quant``), the compact FFN weights sliced from the int8 ones;
    undone exactly by ``remove()``. The prior and the selection still read the float model.
    loop_guard: when a decode step's input token completes a 4-gram the reply already holds,
    that step and the next ``loop_guard - 1`` run the dense FFNs (``guard``); 0 is off.
    """

    method: str = "glass"
    density: float | tuple[float, ...] = 0.5
    lam: float | None = None
    statistic: str | None = None
    prior: object | str | os.PathLike | None = None
    path: str = "sliced"
    share_batch: bool = False
    seed: int = 0
    refresh: int | None = None
    refresh_growth: float | None = None
    refresh_halflife: float | None = None
    dense_start: int | None = None
    prompt_halflife: float | None = None
    schedule_halflife: float | None = None
    comp_tokens: float | None = None
    ridge: float | None = None
    linear_blocks: int | None = None
    weights: str = "float"
    loop_guard: int = 0

    def refresh_every(self, spec: MethodSpec) -> int:
        """Generated tokens between re-selections (0: one neuron set for the whole decode).
        ``refresh`` None takes the method's own setting, 0 turns refresh off."""
        r = spec.refresh if self.refresh is None else self.refresh
        if r is None:
            return 0
        options.whole(r, "refresh", "generated tokens", "off")
        return 0 if spec.dense else r

    def refresh_growth_of(self, spec: MethodSpec) -> float:
        """How much each interval between re-selections grows over the one before (>= 1)."""
        return options.growth(spec.refresh_growth if self.refresh_growth is None else self.refresh_growth)

    def refresh_halflife_of(self, spec: MethodSpec) -> float:
        """Generated tokens over which a token's weight in a re-selection halves (0: equal weights)."""
        h = spec.refresh_halflife if self.refresh_halflife is None else self.refresh_halflife
        return options.tokens(h, "refresh_halflife", "every token weighs the same")

    def prompt_halflife_of(self, spec: MethodSpec) -> float:
        """Prompt tokens over which a prompt token's weight in the local statistic halves (0: equal weights)."""
        h = spec.prompt_halflife if self.prompt_halflife is None else self.prompt_halflife
        return options.tokens(h, "prompt_halflife", "every prompt token weighs the same")

    def dense_start_of(self, spec: MethodSpec) -> int:
        """Generated tokens decoded densely before the first selection (0: select after the prefill)."""
        n = spec.dense_start if self.dense_start is None else self.dense_start
        options.whole(n, "dense_start", "generated tokens", "select right after the prompt")
        return 0 if spec.dense else n

    def schedule_halflife_of(self, spec: MethodSpec) -> float:
        """Generated tokens over which a re-selection's schedule moves halfway to one density (0: never)."""
        h = spec.schedule_halflife if self.schedule_halflife is None else self.schedule_halflife
        return options.tokens(h, "schedule_halflife", "keep the per-layer schedule at every re-selection")

    def comp_tokens_of(self, spec: MethodSpec) -> float:
        """Tokens the prior's mean counts as in a compensation mean that follows the reply (0: the prior's alone)."""
        n = options.tokens(spec.comp_tokens if self.comp_tokens is None else self.comp_tokens, "comp_tokens",
                           "the prior's mean alone")
        if n and not spec.compensate:
            raise ValueError(f"comp_tokens sets the mean a compensated method adds back, and method {spec.name!r} "
                             "adds none; use a compensated method (glass, or a *-comp method) or drop comp_tokens")
        return 0.0 if spec.dense else float(n)

    def ridge_of(self, spec: MethodSpec) -> float:
        """The ridge of a method's linear compensation (``lincomp``)."""
        from .lincomp import DEFAULT_RIDGE

        r = DEFAULT_RIDGE if self.ridge is None else self.ridge
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < float("inf"):
            raise ValueError(f"ridge must be a finite number > 0, got {r!r}")
        if self.ridge is not None and not spec.comp_linear:
            raise ValueError(f"ridge sets how a method predicts the neurons it leaves out, and method {spec.name!r} "
                             "predicts none; use glass-linear or drop ridge")
        return float(r)

    def linear_blocks_of(self, spec: MethodSpec) -> int:
        """Blocks whose left-out neurons a linear-compensated method predicts (0: every block)."""
        n = options.whole(spec.linear_blocks if self.linear_blocks is None else self.linear_blocks, "linear_blocks",
                          "FFN blocks", "every block")
        if self.linear_blocks is not None and not spec.comp_linear:
            raise ValueError(f"linear_blocks sets where a method predicts the neurons it leaves out, and method "
                             f"{spec.name!r} predicts none; use glass-linear or drop linear_blocks")
        return n

    def densities(self) -> tuple[float, ...]:
        if isinstance(self.density, (list, tuple)):
            if not self.density:
                raise ValueError("per-layer density needs one value per FFN block, got an empty list")
            return tuple(self.density)
        return (self.density,)

    def density_for(self, n_blocks: int) -> list[float]:
        """One density per block; a sequence must have exactly ``n_blocks`` values."""
        d = self.densities()
        if len(d) == 1 and not isinstance(self.density, (list, tuple)):
            return [d[0]] * n_blocks
        if len(d) != n_blocks:
            raise ValueError(f"per-layer density has {len(d)} values but the model has {n_blocks} FFN blocks")
        return list(d)

    def resolved(self) -> tuple[MethodSpec, float, str]:
        spec = get_method(self.method)
        for d in self.densities():
            check_density(d)
        if self.lam is not None:
            check_lam(self.lam)
            if spec.lam is not None and float(self.lam) != spec.lam:
                raise ValueError(
                    f"method {spec.name!r} fixes lam={spec.lam:g}; use method 'glass' to choose lam yourself"
                )
        lam = spec.lam if spec.lam is not None else (DEFAULT_LAM if self.lam is None else float(self.lam))
        statistic = self.statistic or spec.statistic
        if statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")
        self.refresh_every(spec)
        self.refresh_growth_of(spec)
        self.refresh_halflife_of(spec)
        self.dense_start_of(spec)
        self.prompt_halflife_of(spec)
        self.schedule_halflife_of(spec)
        self.comp_tokens_of(spec)
        self.ridge_of(spec)
        self.linear_blocks_of(spec)
        check_weights(self.weights)
        check_loop_guard(self.loop_guard)
        if self.path not in PATHS:
            raise ValueError(f"unknown path {self.path!r}; choose 'sliced' or 'masked'")
        return spec, lam, statistic
