"""What an evaluation runs: its settings, the document splits, and the deterministic
list of work items (batches of prompts), plus the key that names a run's journal.

See docs/method.md, "Measuring fidelity", for the protocol.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Sequence

from ..engine import GlassConfig
from ..errors import UserError
from ..guard import check_loop_guard
from ..methods import DEFAULT_LAM, get_method
from ..prior import Prior
from ..ranking import check_density, check_lam

ORACLE = "oracle"
DEFAULT_METHODS = ("dense", "griffin", "global", "magnitude", "random", "glass-a", "glass-i")
SPLITS = ("test", "calib")
JOURNAL_VERSION = 1


class EvalError(ValueError, UserError):
    """The evaluation cannot run with the given settings or data."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything that determines the results (and so the journal key).

    lams: the lam values tried for methods whose lam is tunable (glass-a, glass-i);
    methods that fix lam (griffin 1, global/magnitude/random 0) ignore them.
    split: "test" (reported) or "calib" (used to choose lam); a document belongs to
    the calibration split when a hash of its text is 0 modulo ``calib_every``.
    min_extra_tokens: documents shorter than P + this many tokens are skipped.
    batch_size: prompts per work item (the dense reference is generated per batch).
    weights: "float", or "int8" to run every method (dense included) with int8 weights
    (``quant``) against the float dense model's reference and logits.
    loop_guard: K > 0 teacher-forces every sparse method with the loop guard (``guard``): a
    reference token that completes a 4-gram the reference already holds makes that step and the
    next K - 1 dense. Prompts are then scored one at a time, as batch-1 decoding would run them
    (in a batch one row's repetition would make every row's step dense).
    """

    model: str
    corpus: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    densities: tuple[float, ...] = (0.5,)
    prompt_tokens: tuple[int, ...] = (8, 16, 32, 64)
    gen_tokens: int = 256
    n_prompts: int = 32
    lams: tuple[float, ...] = (DEFAULT_LAM,)
    split: str = "test"
    calib_every: int = 4
    min_extra_tokens: int = 16
    batch_size: int = 8
    seed: int = 0
    weights: str = "float"
    loop_guard: int = 0

    def validate(self) -> None:
        if not self.methods:
            raise EvalError("no methods given")
        meant = [m if m == ORACLE else get_method(m).name for m in self.methods]  # a variant's options in one order
        if len(set(meant)) != len(meant):
            raise EvalError(f"methods listed twice: {', '.join(self.methods)}")
        if not self.densities:
            raise EvalError("no densities given")
        for d in self.densities:
            check_density(d)
        if not self.lams:
            raise EvalError("no lam values given")
        for lam in self.lams:
            check_lam(lam)
        if not self.prompt_tokens or any(int(p) < 1 for p in self.prompt_tokens):
            raise EvalError(f"prompt lengths must be positive integers, got {list(self.prompt_tokens)}")
        if self.gen_tokens < 2:
            raise EvalError(f"gen_tokens must be at least 2 (the first token comes from the dense prefill), "
                            f"got {self.gen_tokens}")
        if self.n_prompts < 1:
            raise EvalError(f"n_prompts must be positive, got {self.n_prompts}")
        if self.split not in SPLITS:
            raise EvalError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.calib_every < 2:
            raise EvalError(f"calib_every must be at least 2, got {self.calib_every}")
        if self.batch_size < 1 or self.min_extra_tokens < 0:
            raise EvalError("batch_size must be positive and min_extra_tokens non-negative")
        try:
            check_loop_guard(self.loop_guard)
        except ValueError as err:
            raise EvalError(str(err)) from None

    def prior_methods(self) -> list[str]:
        """The listed methods that need a global prior (``MethodSpec.needs_prior``)."""
        return [m for m in self.methods
                if m != ORACLE and any(get_method(m).needs_prior_at(lam) for lam in self.lams)]

    def needs_prior(self) -> bool:
        return bool(self.prior_methods())

    def compensates(self) -> bool:
        """Whether a listed method adds back the mean output of the neurons it leaves out."""
        return any(m != ORACLE and get_method(m).compensate for m in self.methods)


@dataclass(frozen=True)
class MethodRun:
    """One evaluated setting: method name, density, resolved lam and statistic."""

    method: str
    density: float
    lam: float
    statistic: str

    def config(self, seed: int, weights: str = "float", loop_guard: int = 0) -> GlassConfig | None:
        """What to apply for this run; None for the float dense model (the reference itself)."""
        if self.method == "dense":
            return None if weights == "float" else GlassConfig(method="dense", weights=weights)
        if self.method == ORACLE:
            return GlassConfig(method="global", density=self.density, statistic=self.statistic, seed=seed,
                               weights=weights, loop_guard=loop_guard)
        spec = get_method(self.method)
        return GlassConfig(method=self.method, density=self.density, lam=None if spec.lam is not None else self.lam,
                           seed=seed, weights=weights, loop_guard=loop_guard)


def method_runs(settings: EvalSettings) -> list[MethodRun]:
    """The (method, density, lam) combinations, in a fixed order. Dense appears once
    per density (it is computed once per prompt and reported in every density's table)."""
    runs = []
    for d in settings.densities:
        for m in settings.methods:
            if m == ORACLE:
                runs.append(MethodRun(ORACLE, float(d), 0.0, "activation"))
                continue
            spec = get_method(m)
            lams = [spec.lam] if spec.lam is not None else list(settings.lams)
            for lam in lams:
                runs.append(MethodRun(m, float(d), float(lam), spec.statistic))
    return runs


def _text_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_documents(docs: Sequence[str], split: str, calib_every: int = 4) -> list[str]:
    """The documents of one split, in a deterministic order that depends on their text
    only (not on the corpus order). Calibration and test splits never share a document."""
    if split not in SPLITS:
        raise EvalError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unique = list(dict.fromkeys(d for d in docs if d.strip()))
    keyed = sorted((_text_hash(d), d) for d in unique)
    want_calib = split == "calib"
    return [d for h, d in keyed if (h % calib_every == 0) == want_calib]


def _bos_prefix(tokenizer) -> list[int]:
    """[BOS] when the tokenizer adds one by default (Gemma, Llama), else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


@dataclass(frozen=True)
class WorkItem:
    """One batch of prompts with the same length: the unit of work and of the journal."""

    prompt_tokens: int
    batch: int
    docs: tuple[int, ...]  # positions in the split's document order
    prompts: tuple[tuple[int, ...], ...]  # token ids, BOS included when the model uses one

    @property
    def id(self) -> str:
        return f"P{self.prompt_tokens}-b{self.batch}"


def plan_items(settings: EvalSettings, tokenizer, docs: Sequence[str]) -> list[WorkItem]:
    """The deterministic list of work items: for every prompt length, the first
    ``n_prompts`` documents of the split that hold at least P + ``min_extra_tokens``
    tokens, cut into batches of ``batch_size``. Items are ordered batch-major (first
    batch of every prompt length, then the second, ...), so that a run cut short still
    covers every prompt length."""
    settings.validate()
    held = split_documents(docs, settings.split, settings.calib_every)
    if not held:
        raise EvalError(f"the {settings.split} split of corpus {settings.corpus!r} is empty "
                        f"({len(docs)} documents in all); use a larger corpus")
    bos = _bos_prefix(tokenizer)
    longest = max(settings.prompt_tokens) + settings.min_extra_tokens
    cache: dict[int, list[int]] = {}

    def tokens(i: int) -> list[int]:
        if i not in cache:
            # a prefix of the text is enough; 16 characters per token is generous
            cache[i] = tokenizer(held[i][: 16 * longest + 256], add_special_tokens=False)["input_ids"]
        return cache[i]

    items: list[WorkItem] = []
    for P in settings.prompt_tokens:
        need = P + settings.min_extra_tokens
        chosen = []
        for i in range(len(held)):
            if len(tokens(i)) >= need:
                chosen.append(i)
                if len(chosen) == settings.n_prompts:
                    break
        if len(chosen) < settings.n_prompts:
            raise EvalError(
                f"only {len(chosen)} documents of the {settings.split} split of {settings.corpus!r} have at least "
                f"{need} tokens (prompt {P} + {settings.min_extra_tokens}); {settings.n_prompts} prompts were asked "
                "for: lower --prompts or use a larger corpus")
        for b in range(0, len(chosen), settings.batch_size):
            part = chosen[b:b + settings.batch_size]
            items.append(WorkItem(int(P), b // settings.batch_size, tuple(part),
                                  tuple(tuple(bos + tokens(i)[:P]) for i in part)))
    return sorted(items, key=lambda it: (it.batch, settings.prompt_tokens.index(it.prompt_tokens)))


def settings_key(settings: EvalSettings, items: Sequence[WorkItem], identity: dict, prior: Prior | None) -> str:
    """A hash of everything the records depend on: settings, prompts, model weights, prior,
    and what each method name means (its registered settings), so that a journal written
    before a method changed is never resumed under the same name."""
    h = hashlib.sha256()
    fields = asdict(settings)
    if fields["weights"] == "float":  # int8 is part of the key only when used
        del fields["weights"]
    if not fields["loop_guard"]:  # so is the loop guard
        del fields["loop_guard"]
    fields["method_specs"] = [asdict(get_method(m)) for m in settings.methods if m != ORACLE]
    h.update(json.dumps(fields, sort_keys=True).encode())
    h.update(json.dumps(identity, sort_keys=True).encode())
    for it in items:
        h.update(json.dumps([it.id, it.prompts]).encode())
    if prior is not None and settings.needs_prior():
        h.update(hashlib.sha256(prior.sums.float().numpy().tobytes()).digest())
        cal = prior.calibration
        if cal is not None and cal.greedy_sums is not None:  # the global view of glass and glass-greedy
            h.update(hashlib.sha256(cal.greedy_sums.float().numpy().tobytes()).digest())
        if cal is not None and cal.greedy_mean is not None and settings.compensates():  # the compensation
            h.update(hashlib.sha256(cal.greedy_mean.float().numpy().tobytes()).digest())
        if cal is not None and cal.short_lam is not None:  # what glass fuses short prompts at
            h.update(f"short_lam={cal.short_lam}".encode())
        if cal is not None and cal.reply_loss is not None:  # the schedule of glass-reply-schedule
            h.update(hashlib.sha256((cal.reply_loss.float().numpy().tobytes()
                                     + cal.reply_check_upper.float().numpy().tobytes())).digest())
    h.update(str(JOURNAL_VERSION).encode())
    return h.hexdigest()[:16]
