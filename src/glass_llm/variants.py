"""Method variants by name: ``BASE:option=value[:option=value ...]``.

A registered method with some of its decode settings changed, named on the command line or in a
request like any method, so that ``glass eval`` can score several settings side by side and
``glass bench`` time them: ``glass-refresh-linear:refresh-growth=2``,
``glass-linear:linear-blocks=4``, ``glass-refresh:refresh=8:refresh-halflife=0``. The options
are those of ``glass generate`` (``--refresh``, ``--linear-blocks``, ...), spelt without the
dashes in front; each must change something the base method does, so a misspelt or idle option
is an error rather than a silently unchanged method. ``methods.get_method`` reads these names.
"""

from __future__ import annotations

from typing import Callable

from . import options

# option -> (MethodSpec field, value type, check of the value, what the base method must do for it to act)
_Check = Callable[[object], object]
OPTIONS: dict[str, tuple[str, type, _Check, str]] = {
    "refresh": ("refresh", int, lambda v: options.whole(v, "refresh", "generated tokens", "off"), "select"),
    "refresh-growth": ("refresh_growth", float, lambda v: options.growth(v, "refresh-growth"), "refresh"),
    "refresh-halflife": ("refresh_halflife", float,
                         lambda v: options.tokens(v, "refresh-halflife", "every token weighs the same"), "refresh"),
    "schedule-halflife": ("schedule_halflife", float,
                          lambda v: options.tokens(v, "schedule-halflife", "keep the per-layer schedule"),
                          "schedule"),
    "dense-start": ("dense_start", int,
                    lambda v: options.whole(v, "dense-start", "generated tokens", "select after the prompt"), "select"),
    "prompt-halflife": ("prompt_halflife", float,
                        lambda v: options.tokens(v, "prompt-halflife", "every prompt token weighs the same"), "select"),
    "comp-tokens": ("comp_tokens", float, lambda v: options.tokens(v, "comp-tokens", "the prior's mean alone"),
                    "compensate"),
    "linear-blocks": ("linear_blocks", int,
                      lambda v: options.whole(v, "linear-blocks", "FFN blocks", "every block"), "predict"),
}

_NEEDS = {
    "select": ("selects neurons", "a sparse method", lambda spec, f: not spec.dense),
    "refresh": ("re-selects during decoding", "a *-refresh method, or add refresh=R",
                lambda spec, f: not spec.dense and f.get("refresh", spec.refresh or 0) > 0),
    "schedule": ("re-selects with a per-layer density", "a *-refresh method with a schedule (glass-refresh, ...)",
                 lambda spec, f: spec.schedule and f.get("refresh", spec.refresh or 0) > 0),
    "compensate": ("adds back the mean of the neurons it leaves out", "glass or a *-comp method",
                   lambda spec, f: spec.compensate),
    "predict": ("predicts the neurons it leaves out", "glass-linear or glass-refresh-linear",
                lambda spec, f: spec.comp_linear),
}


def _value(option: str, text: str, kind: type):
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        unit = "a whole number" if kind is int else "a number"
        raise ValueError(f"method option {option!r} takes {unit}, got {text!r}") from None


def parse(name: str) -> tuple[str, dict[str, object]]:
    """``(base, {MethodSpec field: value})`` of a method name; no fields for a plain name. The
    values are checked here; whether they act on the base method, in ``check``."""
    base, *parts = (p.strip() for p in name.split(":"))
    fields: dict[str, object] = {}
    for part in parts:
        option, eq, text = (s.strip() for s in part.partition("="))
        if option not in OPTIONS:
            raise ValueError(f"unknown method option {option!r} in {name!r}; choose from {', '.join(OPTIONS)} "
                             f"(as BASE:option=value, e.g. glass-refresh:refresh=8)")
        if not eq or not text:
            raise ValueError(f"method option {option!r} in {name!r} needs a value: {option}=VALUE")
        field, kind, check, _ = OPTIONS[option]
        if field in fields:
            raise ValueError(f"method option {option!r} given twice in {name!r}")
        fields[field] = check(_value(option, text, kind))
    return base, fields


def check(spec, fields: dict[str, object]) -> None:
    """Each option of a variant must act on its base method ``spec``."""
    for option, (field, _, _, need) in OPTIONS.items():
        if field not in fields:
            continue
        does, use, acts = _NEEDS[need]
        if not acts(spec, fields):
            raise ValueError(f"method option {option!r} acts on a method that {does}, and {spec.name!r} "
                             f"does not; use {use}")


def name_of(base: str, fields: dict[str, object]) -> str:
    """The variant's name, options in the order of ``OPTIONS`` and numbers in their shortest form."""
    parts = [base]
    for option, (field, kind, _, _) in OPTIONS.items():
        if field in fields:
            v = fields[field]
            parts.append(f"{option}={v}" if kind is int else f"{option}={v:.12g}")
    return ":".join(parts)
