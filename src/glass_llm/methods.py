"""Selection methods as one mechanism with different settings, plus a registry.

Every method selects neurons by ``ranking.select(local, global, lam, density)``; a
method only fixes which local statistic it uses, where its global scores come from
and which ``lam`` it uses. The default ``glass`` goes beyond the paper: its prior is the
statistic of the greedy replies the model writes that are nearest to the prompt (``neighbours``,
where the prior's check finds them better than the one prior of all such text, which
``glass-one-prior`` always uses), its per-layer ``schedule`` is allocated from
each block's loss on greedy replies the model writes (``reply_schedule``), and it
``compensate``s for the neurons it leaves out (their mean output, added back as a bias);
``glass-stored-schedule`` is the same with the schedule of the prior's stored profile (the
default before), and ``glass-schedule`` keeps the schedule with the paper's prior and no
compensation, and is the base of the refresh methods. ``glass-refresh`` adds re-selection during
decoding with an ``adaptive`` lam that grows with the tokens seen (see ``selection``); the
``*-start`` methods decode their first tokens densely and select after them; the ``*-fade``
methods move the per-layer density toward one density as the reply grows;
``glass-a``/``glass-i`` are the paper's method, unchanged. New methods and new global
sources plug in with the ``register_method`` / ``register_global_source`` decorators,
without touching the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from . import variants
from .adapters import FFNBlock, magnitude_scores

# Default aggregation weight for GLASS. Chosen on a calibration split of prompts that
# is never reported on; see BENCHMARKS.md ("Choosing lam") for the sweep behind it.
DEFAULT_LAM = 0.5
# Generated tokens between re-selections for the methods that refresh their neuron sets.
REFRESH_TOKENS = 16
# Generated tokens decoded densely before the first selection, for the methods with a dense start.
DENSE_START_TOKENS = 16
# Generated tokens over which a re-selection's per-layer schedule moves halfway to one density for
# all, for the *-fade methods (chosen on the calibration split: BENCHMARKS.md, "Schedule fade").
SCHEDULE_HALFLIFE_TOKENS = 64
# lam of ``glass-prompt-lam`` by the prompt's token count: 0.25 up to 8 tokens, 0.5 from 32, linear
# in log length between (``dispersion.lam_for_tokens``). Chosen on text SmolLM2 writes itself
# (``benchmarks/lam_self.py``): with the prior of greedy text and compensation, a short prompt is
# best trusted less than the paper's 0.5; Gemma-3-270m's own text does not show it (BENCHMARKS.md,
# "A lam that grows with the prompt"). ``glass`` uses the same windows with the short-prompt lam
# that its prior's check chose for the model (``lam_choice``).
PROMPT_LAM_TOKENS = (8, 32)
PROMPT_LAMS = (0.25, 0.5)
# Greedy replies, of the prior's bank, nearest to the prompt whose statistic is the global view of ``glass``
# where the prior's check passes (BENCHMARKS.md, "The nearest greedy replies"): a quarter of the bank, the
# share that scored best on the calibration split.
NEIGHBOURS = 64


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    lam: float | None = None  # fixed lam; None means tunable (default DEFAULT_LAM)
    statistic: str = "activation"
    global_source: str | None = "prior"
    dense: bool = False
    # Beyond the paper (read from the prior's selection calibration, see selection.py):
    adaptive: bool = False  # lam per block from the prompt's token count (dispersion.py)
    schedule: bool = False  # per-block density under the one density asked for (schedule.py)
    fusion: str = "rank"  # with adaptive: "rank" (weighted mean rank) or "score" (mixed mean statistic)
    refresh: int | None = None  # re-select every this many generated tokens (engine.GlassHandle.refresh)
    refresh_growth: float = 1.0  # each interval between re-selections this many times the previous one
    refresh_halflife: float = 0.0  # a token's weight in a re-selection halves every this many tokens (0: equal)
    dense_start: int = 0  # generated tokens decoded densely, their statistic joining the prompt's, before selecting
    prompt_halflife: float = 0.0  # a prompt token's weight in the local statistic halves every this many tokens back (0: equal)
    # with schedule and refresh: the per-layer density's pull away from one density for all halves
    # every this many generated tokens (0: the schedule at every re-selection)
    schedule_halflife: float = 0.0
    # add back the mean output of the neurons left out (the prior's mean activation of greedy text;
    # compensation.set_compensation): a bias per selection, no work per decode step
    compensate: bool = False
    # with compensate: the mean activation added back is that of the generated tokens so far (the dense
    # start's, then at each re-selection the reply's, weighted as in the local statistic; never the
    # prompt's), with the prior's mean counted as this many tokens (0: the prior's mean alone)
    comp_tokens: float = 0.0
    # with compensate: the neurons left out predicted from the kept ones by least squares on the prior's
    # activation covariance of greedy replies (``lincomp``), instead of their mean alone
    comp_linear: bool = False
    # with comp_linear: predict in this many blocks only, those with the largest loss on greedy replies (the
    # prior's ``reply_loss``), and add back the mean elsewhere: each block's solve costs about a third of a dense
    # decode step on 2 CPU cores (0: every block)
    linear_blocks: int = 0
    # lam by the prompt's token count, the same for every block (exclusive with ``adaptive``): "rule" the
    # lams PROMPT_LAMS at PROMPT_LAM_TOKENS; "checked" the prior's checked short-prompt lam up to 8 tokens
    # and 0.5 from 32 (``Calibration.short_lam``; one lam where it is 0.5). ``lam`` then tilts it as it tilts
    # an adaptive table (0.5 keeps it)
    prompt_lam: str | None = None
    # with schedule: allocate the per-layer densities from the profile measured on greedy replies
    # (``reply_schedule``; used where its check measured it better than one density, one density elsewhere);
    # False: from the prior's stored profile, where the schedule check of temperature-1 text passed
    reply_schedule: bool = False
    # the global view from the prompt's nearest greedy replies: the summed statistic of this many of the
    # replies kept one by one in the prior (``neighbours``; 0: the global source's one ranking for every prompt)
    neighbours: int = 0
    # with neighbours: only where the prior's check measured them better than the one prior (``neighbours_check``;
    # ``Calibration.use_neighbours``), the one prior of greedy text elsewhere
    neighbours_checked: bool = False

    @property
    def tilts_lam(self) -> bool:
        """Whether the method's lam comes from a table that the user's ``lam`` only tilts. Not so
        for a "checked" short-prompt lam: where the prior's check chose none, ``lam`` is the one lam
        (and where it chose one, 0.5 keeps the checked row), so it is labelled as a fixed lam."""
        return self.adaptive or self.prompt_lam == "rule"

    @property
    def needs_prior(self) -> bool:
        """Whether this method reads the global prior at its own lam (the default for a tunable one)."""
        return self.needs_prior_at()

    def needs_prior_at(self, lam: float | None = None) -> bool:
        """Whether selecting with this method at ``lam`` reads the global prior: the one place
        that decides it. A fixed-lam method ignores ``lam``; ``None`` means ``DEFAULT_LAM``.
        The prior enters the aggregation only when its weight ``1 - lam`` is positive."""
        if self.dense:
            return False
        if self.compensate:  # the mean activation it adds back is read from the prior file
            return True
        if self.global_source not in PRIOR_SOURCES:
            return False
        resolved = self.lam if self.lam is not None else (DEFAULT_LAM if lam is None else float(lam))
        return resolved < 1


# Global sources read from the prior file: the statistic of temperature-1 samples (the
# paper's prior) and that of greedy text (calibration step 5; ``calibration.greedy_statistic``).
PRIOR_SOURCES = ("prior", "greedy")

METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if ":" in spec.name:
        raise ValueError(f"method name {spec.name!r}: ':' starts a variant's options (BASE:option=value); rename it")
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    if spec.prompt_lam not in (None, "rule", "checked"):
        raise ValueError(f"method {spec.name!r}: prompt_lam is None, 'rule' or 'checked', got {spec.prompt_lam!r}")
    if spec.neighbours and spec.global_source != "greedy":
        raise ValueError(f"method {spec.name!r}: the nearest replies (neighbours) replace the prior of greedy text; "
                         "set global_source='greedy'")
    if spec.neighbours_checked and not spec.neighbours:
        raise ValueError(f"method {spec.name!r}: neighbours_checked decides whether to use the nearest replies; "
                         "set neighbours > 0")
    if spec.neighbours < 0:
        raise ValueError(f"method {spec.name!r}: neighbours is a number of greedy replies >= 0, got {spec.neighbours}")
    if spec.adaptive and spec.prompt_lam:
        raise ValueError(f"method {spec.name!r}: a lam by prompt length (prompt_lam) and the calibrated lam table "
                         "(adaptive) exclude each other; choose one")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """A registered method, or a variant of one with some decode settings changed
    (``BASE:option=value``, ``variants``)."""
    base, fields = variants.parse(name)
    try:
        spec = METHODS[base]
    except KeyError:
        raise ValueError(f"unknown method {base!r}; choose one of {', '.join(sorted(METHODS))}") from None
    if not fields:
        return spec
    variants.check(spec, fields)
    return replace(spec, name=variants.name_of(base, fields), **fields)


for _spec in (
    MethodSpec("dense", "the unmodified model (no sparsity)", lam=1.0, global_source=None, dense=True),
    MethodSpec("griffin", "prompt-only selection by activation (GRIFFIN, lam=1)", lam=1.0, global_source=None),
    MethodSpec("global", "static selection by the global prior alone (lam=0)", lam=0.0),
    MethodSpec("glass", "GLASS, calibrated: prompt merged with the statistic of the greedy replies the model writes "
               f"that are nearest to it ({NEIGHBOURS} of a bank kept in the prior; the one prior of greedy text where "
               "the prior's check finds no gain), per-layer density from each block's loss on greedy replies and a "
               "lower lam for short prompts where the prior's checks show them better, and the mean output of the "
               "neurons left out added back", schedule=True, global_source="greedy", compensate=True,
               prompt_lam="checked", reply_schedule=True, neighbours=NEIGHBOURS, neighbours_checked=True),
    MethodSpec("glass-one-prior", "ablation: glass fusing every prompt with the one prior of greedy text (glass "
               "before the nearest replies)", schedule=True, global_source="greedy", compensate=True,
               prompt_lam="checked", reply_schedule=True),
    MethodSpec("glass-stored-schedule", "ablation: glass with the per-layer schedule of the prior's sensitivity "
               "profile (temperature-1 text; glass before the schedule of greedy replies)", schedule=True,
               global_source="greedy", compensate=True, prompt_lam="checked"),
    MethodSpec("glass-fixed-lam", "ablation: glass-stored-schedule at one lam for every prompt length (glass "
               "before the short-prompt lam check)", schedule=True, global_source="greedy", compensate=True),
    MethodSpec("glass-greedy", "ablation: glass-stored-schedule without compensation (neurons left out count as "
               "zero)",
               schedule=True, global_source="greedy"),
    MethodSpec("glass-a", "A-GLASS (the paper): activation statistic, prompt merged with prior"),
    MethodSpec("glass-i", "I-GLASS: impact statistic, prompt merged with prior", statistic="impact"),
    MethodSpec("magnitude", "static selection by weight norms ||W_gate[j]||*||W_up[j]||", lam=0.0, global_source="magnitude"),
    MethodSpec("random", "static random selection (seeded)", lam=0.0, global_source="random"),
    MethodSpec("glass-schedule", "per-layer density and the paper's prior, fixed lam, no compensation (the base of "
               "the refresh methods)", schedule=True),
    MethodSpec("glass-a-greedy", "ablation: glass-a with the prior of greedy text", global_source="greedy"),
    MethodSpec("global-greedy", "static selection by the prior of greedy text alone (lam=0)", lam=0.0,
               global_source="greedy"),
    MethodSpec("glass-adaptive", "ablation: adaptive lam, uniform density", adaptive=True),
    MethodSpec("glass-schedule-adaptive", "ablation: per-layer density and adaptive lam, no refresh",
               adaptive=True, schedule=True),
    MethodSpec("glass-score", "alternative: per-layer density, prompt and prior mean statistics mixed", adaptive=True,
               schedule=True, fusion="score"),
    MethodSpec("glass-score-adaptive", "ablation: score fusion, uniform density", adaptive=True, fusion="score"),
    MethodSpec("glass-refresh", f"glass-schedule re-selecting every {REFRESH_TOKENS} generated tokens from prompt "
               f"and output (a token's weight halving every {REFRESH_TOKENS} tokens after it), with a lam that grows "
               "with the tokens seen", adaptive=True, schedule=True, refresh=REFRESH_TOKENS,
               refresh_halflife=REFRESH_TOKENS),
    MethodSpec("glass-refresh-cumulative", "ablation: glass-refresh with every token seen weighing the same",
               adaptive=True, schedule=True, refresh=REFRESH_TOKENS),
    MethodSpec("glass-start", f"glass-schedule whose first {DENSE_START_TOKENS} generated tokens run dense, "
               "selecting from the prompt plus them", schedule=True, dense_start=DENSE_START_TOKENS),
    MethodSpec("glass-refresh-start", f"glass-refresh whose first {DENSE_START_TOKENS} generated tokens run dense",
               adaptive=True, schedule=True, refresh=REFRESH_TOKENS, refresh_halflife=REFRESH_TOKENS,
               dense_start=DENSE_START_TOKENS),
    MethodSpec("glass-refresh-fade", f"glass-refresh whose per-layer density moves toward one density for all as "
               f"the reply grows (halfway every {SCHEDULE_HALFLIFE_TOKENS} generated tokens)", adaptive=True,
               schedule=True, refresh=REFRESH_TOKENS, refresh_halflife=REFRESH_TOKENS,
               schedule_halflife=SCHEDULE_HALFLIFE_TOKENS),
    MethodSpec("glass-refresh-start-fade", "glass-refresh-start with the schedule fade of glass-refresh-fade",
               adaptive=True, schedule=True, refresh=REFRESH_TOKENS, refresh_halflife=REFRESH_TOKENS,
               dense_start=DENSE_START_TOKENS, schedule_halflife=SCHEDULE_HALFLIFE_TOKENS),
    MethodSpec("glass-a-refresh", f"ablation: glass-a re-selecting every {REFRESH_TOKENS} generated tokens",
               refresh=REFRESH_TOKENS),
    MethodSpec("glass-schedule-refresh", f"ablation: per-layer density, fixed lam, re-selecting every "
               f"{REFRESH_TOKENS} generated tokens", schedule=True, refresh=REFRESH_TOKENS),
):
    register_method(_spec)

# Compensated variants: the same selection, plus the mean output of the neurons it leaves out
# added back as a bias (``MethodSpec.compensate``; BENCHMARKS.md, "Compensating the neurons left out").
for _base in ("glass-schedule", "glass-a", "griffin", "glass-refresh-start-fade"):
    _spec = METHODS[_base]
    register_method(replace(_spec, name=f"{_base}-comp", compensate=True,
                            description=f"{_base} plus the mean output of the neurons it leaves out, added back"))

# glass trusting a short prompt less (BENCHMARKS.md, "A lam that grows with the prompt").
register_method(replace(METHODS["glass-stored-schedule"], name="glass-prompt-lam", prompt_lam="rule",
                        description="glass-stored-schedule whose lam grows with the prompt's length, 0.25 up to 8 "
                                    "tokens to 0.5 from 32 for every model (chosen on text SmolLM2 writes itself)"))
register_method(replace(
    METHODS["glass"], name="glass-linear", comp_linear=True,
    description="glass whose neurons left out are predicted from those it keeps, by least squares on the "
                "activation covariance of greedy replies kept with the prior (lincomp), instead of their mean"))
# The name ``glass-one-prior`` had while its schedule of greedy replies was opt-in (runs and commands of that time).
register_method(replace(METHODS["glass-one-prior"], name="glass-reply-schedule",
                        description="glass (its name while the schedule of greedy replies was opt-in)"))
# The best re-selecting method: compensation whose mean follows the reply (the generated tokens' own
# mean activation, the prior's mean counting as one refresh interval of tokens; BENCHMARKS.md,
# "A compensation mean that follows the reply").
register_method(replace(METHODS["glass-refresh-start-fade-comp"], name="glass-refresh-start-fade-comp-running",
                        comp_tokens=float(REFRESH_TOKENS),
                        description="glass-refresh-start-fade-comp whose compensation mean is that of the tokens "
                                    f"generated so far, the prior's mean counting as {REFRESH_TOKENS} more tokens"))

# The best re-selecting method with the per-layer density of glass, allocated from each block's loss on
# greedy replies where that check passed; the schedule fade (which moved a schedule measured on other text
# toward one density as the reply grows) without and with (BENCHMARKS.md, "The schedule of greedy replies as
# the default `glass`").
_running = METHODS["glass-refresh-start-fade-comp-running"]
register_method(replace(_running, name="glass-refresh-reply", reply_schedule=True, schedule_halflife=0.0,
                        description="glass-refresh-start-fade-comp-running with glass's per-layer density (from "
                                    "each block's loss on greedy replies), kept at every re-selection"))
register_method(replace(_running, name="glass-refresh-reply-fade", reply_schedule=True,
                        description="glass-refresh-reply whose per-layer density fades to one density as the reply "
                                    f"grows (halfway every {SCHEDULE_HALFLIFE_TOKENS} generated tokens)"))

# glass-refresh-reply fused with the prior of greedy text (the one prior, then the nearest replies, met again
# at each re-selection by the prompt plus the tokens so far; BENCHMARKS.md, "Re-selection with the nearest
# greedy replies").
register_method(replace(METHODS["glass-refresh-reply"], name="glass-refresh-reply-greedy", global_source="greedy",
                        description="glass-refresh-reply fused with the prior of greedy text"))
register_method(replace(METHODS["glass-refresh-reply-greedy"], name="glass-refresh-neighbours", neighbours=NEIGHBOURS,
                        description=f"glass-refresh-reply fused with the statistic of the {NEIGHBOURS} greedy replies "
                                    "nearest to the prompt and the tokens so far, met again at each re-selection"))

# glass-refresh-neighbours predicting the neurons it leaves out from those it keeps (glass-linear's
# prediction, centred on the mean that follows the reply), solved again at each re-selection.
register_method(replace(METHODS["glass-refresh-neighbours"], name="glass-refresh-linear", comp_linear=True,
                        description="glass-refresh-neighbours whose neurons left out are predicted from those it keeps "
                                    "by least squares (as glass-linear), solved again at each re-selection"))

# glass taking the nearest replies whatever the prior's check says (the check's own method).
register_method(replace(METHODS["glass"], name="glass-neighbours", neighbours_checked=False,
                        description=f"glass whose global view is the statistic of the {NEIGHBOURS} greedy replies of "
                                    "the model's own (of those kept in the prior) most similar to the prompt"))

# A global source maps (blocks, prior, statistic, seed) to one (d_ff,) score per block.
GlobalSource = Callable[[list[FFNBlock], object, str, int], list[torch.Tensor]]
GLOBAL_SOURCES: dict[str, GlobalSource] = {}


def register_global_source(name: str) -> Callable[[GlobalSource], GlobalSource]:
    def deco(fn: GlobalSource) -> GlobalSource:
        GLOBAL_SOURCES[name] = fn
        return fn

    return deco


@register_global_source("prior")
def _prior_scores(blocks, prior, statistic, seed):
    if prior is None:
        raise ValueError(
            "this method needs a global prior: build one with `glass prior MODEL -o prior.safetensors` "
            "and pass prior=... (or --prior FILE)"
        )
    table = prior.scores_for(statistic)
    return [table[b.index] for b in blocks]


@register_global_source("greedy")
def _greedy_scores(blocks, prior, statistic, seed):
    if prior is None:
        raise ValueError("this method needs a global prior (it reads the prior's statistic of greedy text): build "
                         "one with `glass prior MODEL -o prior.safetensors` and pass prior=... (or --prior FILE)")
    cal = prior.calibration
    if cal is None or cal.greedy_sums is None:
        raise ValueError("this prior has no statistic of greedy text (format 3 or older): run "
                         "`glass prior MODEL --recalibrate` to add it, or use a method of the paper's prior (glass-a)")
    table = prior.scores_for(statistic, cal.greedy_sums)
    return [table[b.index] for b in blocks]


@register_global_source("magnitude")
def _magnitude(blocks, prior, statistic, seed):
    return [magnitude_scores(b) for b in blocks]


@register_global_source("random")
def _random(blocks, prior, statistic, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b.d_ff, generator=g) for b in blocks]
