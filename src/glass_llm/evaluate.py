"""Fidelity evaluation (DESIGN section 7): how close each method stays to the dense model.

Protocol, per prompt (the first ``P`` tokens of a held document):

1. the dense model writes a greedy reference of ``G`` tokens (batched across prompts of
   the same length, so no padding; EOS is suppressed until ``G`` tokens exist);
2. every method runs teacher-forced over prompt + reference
   (``teacher.continuation_logits``), its neurons chosen from the prompt alone;
3. over the reference positions where the sparse FFN applies (all but the first,
   which the dense prefill predicts in every method) we measure the negative
   log-likelihood of the reference and KL(dense || method) per token;
4. per layer, the oracle set is the top-k neurons by the method's statistic over the
   reference tokens that the sparse FFN processes; we report the Jaccard index of the
   method's set with it.

Work is a deterministic list of ``WorkItem`` (one batch of prompts of one length),
computed by ``plan_items``. ``run_eval`` takes ``rank``/``world`` and a ``gather``
hook so that items can be split across processes; only rank 0 writes files. Every
finished item is appended to a journal in the output folder, keyed by a hash of the
settings, so an interrupted run resumes where it stopped.

The pseudo-method ``oracle`` uses the oracle set itself (chosen from the reference,
so it is not a real method): an upper bound on what any fixed neuron set can reach.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .adapters import down_column_norms, find_ffn_blocks
from .calibrate import ActivationRecorder
from .corpora import load_texts
from .engine import GlassConfig
from .methods import DEFAULT_LAM, get_method
from .metrics import kl_per_token, token_nll
from .prior import Prior, model_identity, prior_from_sums
from .ranking import check_density, check_lam, jaccard, select
from .stats import finalize
from .teacher import continuation_logits

ORACLE = "oracle"
DEFAULT_METHODS = ("dense", "griffin", "global", "magnitude", "random", "glass-a", "glass-i")
SPLITS = ("test", "calib")
JOURNAL_VERSION = 1

Gather = Callable[[list[dict]], list[dict]]


class EvalError(ValueError):
    """The evaluation cannot run with the given settings or data."""


def _identity(records: list[dict]) -> list[dict]:
    return records


# settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """Everything that determines the results (and so the journal key).

    lams: the lam values tried for methods whose lam is tunable (glass-a, glass-i);
    methods that fix lam (griffin 1, global/magnitude/random 0) ignore them.
    split: "test" (reported) or "calib" (used to choose lam); a document belongs to
    the calibration split when a hash of its text is 0 modulo ``calib_every``.
    min_extra_tokens: documents shorter than P + this many tokens are skipped.
    batch_size: prompts per work item (the dense reference is generated per batch).
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

    def validate(self) -> None:
        if not self.methods:
            raise EvalError("no methods given")
        if len(set(self.methods)) != len(self.methods):
            raise EvalError(f"methods listed twice: {', '.join(self.methods)}")
        for m in self.methods:
            if m != ORACLE:
                get_method(m)
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

    def needs_prior(self) -> bool:
        return any(m != ORACLE and get_method(m).needs_prior for m in self.methods)


@dataclass(frozen=True)
class MethodRun:
    """One evaluated setting: method name, density, resolved lam and statistic."""

    method: str
    density: float
    lam: float
    statistic: str

    def config(self, seed: int) -> GlassConfig | None:
        if self.method == "dense":
            return None
        if self.method == ORACLE:
            return GlassConfig(method="global", density=self.density, statistic=self.statistic, seed=seed)
        spec = get_method(self.method)
        return GlassConfig(method=self.method, density=self.density, lam=None if spec.lam is not None else self.lam,
                           seed=seed)


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


# documents, split, prompts ------------------------------------------------------------


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
    """A hash of everything the records depend on: settings, prompts, model weights, prior."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(settings), sort_keys=True).encode())
    h.update(json.dumps(identity, sort_keys=True).encode())
    for it in items:
        h.update(json.dumps([it.id, it.prompts]).encode())
    if prior is not None and settings.needs_prior():
        h.update(hashlib.sha256(prior.sums.float().numpy().tobytes()).digest())
    h.update(str(JOURNAL_VERSION).encode())
    return h.hexdigest()[:16]


# one work item ------------------------------------------------------------------------


@torch.no_grad()
def generate_references(model: nn.Module, prompts: torch.Tensor, gen_tokens: int, pad_id: int) -> torch.Tensor:
    """Greedy dense continuations of ``gen_tokens`` tokens for a (B, P) batch of prompts."""
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                         max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, pad_token_id=pad_id,
                         temperature=None, top_p=None, top_k=None)
    return out[:, prompts.shape[1]:]


@torch.no_grad()
def oracle_sums(model: nn.Module, prompts: torch.Tensor, refs: torch.Tensor) -> list[torch.Tensor]:
    """Per-row activation sums (one (B, d_ff) tensor per layer) over the reference tokens
    that the sparse FFN processes (all but the last)."""
    ids = torch.cat([prompts, refs[:, :-1]], dim=1)
    mask = torch.zeros_like(ids)
    mask[:, prompts.shape[1]:] = 1
    rec = ActivationRecorder(model)
    rec.per_row = True
    with rec:
        rec.run(model, ids, mask, attention_mask=torch.ones_like(ids), logits_to_keep=1)
    return [s.cpu() for s in rec.take_row_sums()]


def _row_scores(sums: list[torch.Tensor], row: int, statistic: str, down_norms: list[torch.Tensor]) -> list[torch.Tensor]:
    return [finalize(s[row], statistic, n) for s, n in zip(sums, down_norms)]


def _row_sets(selections: list[torch.Tensor] | None, row: int, d_ff: list[int], density: float) -> list[torch.Tensor]:
    """Row ``row``'s (k,) index set per layer. Static methods return one (1, k) set for
    the batch; ``None`` (no sparsity applied, density 1) means every neuron."""
    if selections is None:
        if density < 1.0:
            raise EvalError("a sparse method returned no neuron sets")
        return [torch.arange(n) for n in d_ff]
    return [(s[row] if s.shape[0] > 1 else s[0]).cpu() for s in selections]


def teacher_rows(gen_tokens: int, vocab: int, budget_bytes: float = 4e8) -> int:
    """How many prompts to teacher-force together so that one (rows, G, V) float32
    logits tensor stays within ``budget_bytes``."""
    return max(1, int(budget_bytes // (gen_tokens * vocab * 4)))


@torch.no_grad()
def evaluate_item(model: nn.Module, tokenizer, item: WorkItem, settings: EvalSettings,
                  prior: Prior | None) -> list[dict]:
    """Records of every method run for every prompt of ``item`` (one dict per prompt and
    run, ordered by prompt, then run)."""
    device = next(model.parameters()).device
    prompts = torch.tensor(item.prompts, dtype=torch.long, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    refs = generate_references(model, prompts, settings.gen_tokens, pad)
    if refs.shape[1] != settings.gen_tokens:
        raise EvalError(f"the dense model wrote {refs.shape[1]} tokens instead of {settings.gen_tokens}")
    blocks = find_ffn_blocks(model)
    d_ff = [b.d_ff for b in blocks]
    down_norms = [down_column_norms(b).cpu() for b in blocks]
    sums = oracle_sums(model, prompts, refs)
    runs = method_runs(settings)
    oracle_sets: dict[tuple[int, str, float], list[torch.Tensor]] = {}

    def oracle_for(row: int, statistic: str, density: float) -> list[torch.Tensor]:
        key = (row, statistic, density)
        if key not in oracle_sets:
            scores = _row_scores(sums, row, statistic, down_norms)
            oracle_sets[key] = [select(s, None, 1.0, density) for s in scores]
        return oracle_sets[key]

    table: dict[tuple[int, int], dict] = {}
    B = prompts.shape[0]
    step = teacher_rows(settings.gen_tokens, int(model.get_output_embeddings().weight.shape[0]))
    for lo in range(0, B, step):
        rows = list(range(lo, min(B, lo + step)))
        p, r = prompts[lo:rows[-1] + 1], refs[lo:rows[-1] + 1]
        targets = r[:, 1:]
        dense_logits = continuation_logits(model, p, r, None)[0][:, 1:]
        dense_nll = token_nll(dense_logits, targets)
        for j, run in enumerate(runs):
            if run.method == "dense":
                for i, row in enumerate(rows):
                    table[row, j] = {"nll": float(dense_nll[i].mean()), "kl": 0.0, "jaccard": None}
                continue
            if run.method == ORACLE:  # the oracle set differs per prompt: one row at a time
                parts = []
                for i, row in enumerate(rows):
                    oracle_prior = prior_from_sums(model, [s[row] for s in sums], settings.gen_tokens - 1,
                                                   {"kind": "oracle"}, blocks)
                    logits, sel = continuation_logits(model, p[i:i + 1], r[i:i + 1], run.config(settings.seed),
                                                      oracle_prior)
                    parts.append((logits[:, 1:], sel))
                results = [(row, i, lg[0], sel, 0) for (i, row), (lg, sel) in zip(enumerate(rows), parts)]
            else:
                logits, selections = continuation_logits(model, p, r, run.config(settings.seed), prior)
                logits = logits[:, 1:]
                results = [(row, i, logits[i], selections, i) for i, row in enumerate(rows)]
            for row, i, lg, sel, sel_row in results:
                nll = token_nll(lg, targets[i])
                kl = kl_per_token(dense_logits[i], lg)
                sets = _row_sets(sel, sel_row, d_ff, run.density)
                oracle = oracle_for(row, run.statistic, run.density)
                jac = [float(jaccard(a.unsqueeze(0), b.unsqueeze(0), n)[0]) for a, b, n in zip(sets, oracle, d_ff)]
                table[row, j] = {"nll": float(nll.mean()), "kl": float(kl.mean()), "jaccard": jac}
            del results
    records = []
    for row in range(B):
        for j, run in enumerate(runs):
            records.append({"item": item.id, "doc": item.docs[row], "prompt_tokens": item.prompt_tokens,
                            "method": run.method, "density": run.density, "lam": run.lam,
                            "statistic": run.statistic, **table[row, j], "positions": settings.gen_tokens - 1})
    return records


# journal ------------------------------------------------------------------------------


def journal_path(out_dir: str | os.PathLike, key: str) -> Path:
    return Path(out_dir) / f"journal-{key}.jsonl"


def read_journal(path: Path) -> dict[str, list[dict]]:
    """Finished items (id -> records). A torn last line (a crash mid-write) is dropped,
    and the file is rewritten without it so that later appends stay readable."""
    if not path.is_file():
        return {}
    raw = path.read_text(encoding="utf-8")
    done, good_lines = _parse_journal(raw)
    clean = "".join(ln + "\n" for ln in good_lines)
    if clean != raw:
        atomic_write(path, clean)
    return done


def _parse_journal(raw: str) -> tuple[dict[str, list[dict]], list[str]]:
    done: dict[str, list[dict]] = {}
    good_lines = []
    for line in raw.splitlines():
        try:
            entry = json.loads(line)
            item, records = entry["item"], entry["records"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        done[item] = records
        good_lines.append(line)
    return done, good_lines


def append_journal(path: Path, item_id: str, records: list[dict]) -> None:
    """Append one finished item as a single line, flushed to disk."""
    line = json.dumps({"item": item_id, "records": records}, sort_keys=True) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# aggregation --------------------------------------------------------------------------

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def ci95_halfwidth(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t; 0 for one value)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return t * sd / math.sqrt(n)


def aggregate(records: Sequence[dict], settings: EvalSettings, extra: dict | None = None) -> list[dict]:
    """One result per (method, density, lam, prompt length), in a fixed order.

    ppl = exp(mean over prompts of the per-prompt mean NLL), with the 95% interval of
    that mean mapped through exp; kl = mean over prompts of the per-prompt mean KL, with
    the half-width of its 95% interval; jaccard = per-layer mean over prompts.
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["method"], rec["density"], rec["lam"], rec["prompt_tokens"]), []).append(rec)
    order = {m: i for i, m in enumerate(settings.methods)}
    results = []
    for key in sorted(groups, key=lambda k: (k[1], k[3], order.get(k[0], 99), k[2])):
        method, density, lam, P = key
        recs = sorted(groups[key], key=lambda r: (r["item"], r["doc"]))
        nlls = [r["nll"] for r in recs]
        kls = [r["kl"] for r in recs]
        mean_nll = sum(nlls) / len(nlls)
        h_nll = ci95_halfwidth(nlls)
        jac = None
        if recs[0]["jaccard"] is not None:
            layers = len(recs[0]["jaccard"])
            jac = [sum(r["jaccard"][i] for r in recs) / len(recs) for i in range(layers)]
        results.append({
            "model": settings.model, "corpus": settings.corpus, "split": settings.split, "method": method,
            "statistic": recs[0]["statistic"], "density": density, "lam": lam, "prompt_tokens": P,
            "gen_tokens": settings.gen_tokens, "n_prompts": len(recs),
            "ppl": math.exp(mean_nll), "ppl_ci95": [math.exp(mean_nll - h_nll), math.exp(mean_nll + h_nll)],
            "nll": mean_nll, "kl": sum(kls) / len(kls), "kl_ci95": ci95_halfwidth(kls),
            "jaccard_mean": None if jac is None else sum(jac) / len(jac), "jaccard": jac,
            **(extra or {}),
        })
    return results


# outputs ------------------------------------------------------------------------------

CSV_FIELDS = ("model", "corpus", "split", "method", "statistic", "density", "lam", "prompt_tokens", "gen_tokens",
              "n_prompts", "ppl", "ppl_ci95_low", "ppl_ci95_high", "kl", "kl_ci95", "jaccard_mean", "jaccard")


def results_csv(results: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        row = dict(r)
        row["ppl_ci95_low"], row["ppl_ci95_high"] = r["ppl_ci95"]
        row["jaccard"] = "" if r["jaccard"] is None else ";".join(f"{x:.4f}" for x in r["jaccard"])
        row["jaccard_mean"] = "" if r["jaccard_mean"] is None else r["jaccard_mean"]
        w.writerow(row)
    return buf.getvalue()


def _label(r: dict) -> str:
    spec_lam = None if r["method"] == ORACLE else get_method(r["method"]).lam
    return r["method"] if spec_lam is not None or r["method"] == ORACLE else f"{r['method']} (lam {r['lam']:g})"


def results_markdown(results: Sequence[dict], title: str | None = None) -> str:
    """Per density: one table per measure (rows = methods, columns = prompt lengths),
    then the full table."""
    if not results:
        return "(no results)\n"
    lines = []
    if title:
        lines += [f"# {title}", ""]
    first = results[0]
    lines += [f"Model `{first['model']}`, corpus `{first['corpus']}` ({first['split']} split), "
              f"{first['gen_tokens']} generated tokens, {first['n_prompts']} prompts per cell.", ""]
    for density in sorted({r["density"] for r in results}):
        rows = [r for r in results if r["density"] == density]
        Ps = sorted({r["prompt_tokens"] for r in rows})
        labels = list(dict.fromkeys(_label(r) for r in rows))
        cell = {(_label(r), r["prompt_tokens"]): r for r in rows}
        for name, fmt in (("KL(dense || method) per token, mean ± 95% CI", lambda r: f"{r['kl']:.3f} ± {r['kl_ci95']:.3f}"),
                          ("Perplexity of the dense reference", lambda r: f"{r['ppl']:.3f}"),
                          ("Jaccard with the oracle set (mean over layers)",
                           lambda r: "-" if r["jaccard_mean"] is None else f"{r['jaccard_mean']:.3f}")):
            lines += [f"### Density {density:g}: {name}", "",
                      "| method | " + " | ".join(f"P={P}" for P in Ps) + " |",
                      "|---|" + "---:|" * len(Ps)]
            for lab in labels:
                vals = [fmt(cell[(lab, P)]) if (lab, P) in cell else "" for P in Ps]
                lines.append(f"| {lab} | " + " | ".join(vals) + " |")
            lines.append("")
    return "\n".join(lines)


def write_outputs(out_dir: str | os.PathLike, results: list[dict], settings: EvalSettings, key: str,
                  plots: bool = True) -> list[Path]:
    """results.json, results.csv, results.md, settings.json and the PNG plots."""
    out = Path(out_dir)
    written = [
        atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n"),
        atomic_write(out / "results.csv", results_csv(results)),
        atomic_write(out / "results.md", results_markdown(results, title=f"Fidelity: {settings.model}")),
        atomic_write(out / "settings.json", json.dumps({"key": key, **asdict(settings)}, indent=1) + "\n"),
    ]
    if plots:
        from .plots import write_plots

        written += write_plots(results, out)
    return written


# driver -------------------------------------------------------------------------------


@dataclass
class EvalRun:
    """What ``run_eval`` returns: per-prompt records, aggregated results, the journal key."""

    records: list[dict]
    results: list[dict]
    key: str
    items: list[WorkItem] = field(default_factory=list)


def run_eval(model: nn.Module, tokenizer, settings: EvalSettings, prior: Prior | None = None,
             out_dir: str | os.PathLike | None = None, rank: int = 0, world: int = 1, gather: Gather = _identity,
             progress: bool = True, plots: bool = True, docs: Sequence[str] | None = None,
             max_items: int | None = None, extra: dict | None = None, write_partial: bool = False) -> EvalRun:
    """Run (or resume) the evaluation.

    Pending items run in rounds of ``world``: in round ``i`` this process evaluates
    pending item ``i * world + rank``; ``gather`` turns this process's records into all
    processes' records (identity for one process) and is called once per round on every
    rank. Only rank 0 writes the journal and the outputs. ``docs`` overrides the corpus
    (for tests); ``max_items`` stops after that many new items. Outputs are written once
    every item is done, or from whatever is done when ``write_partial`` is set (the
    tables then say how many prompts each cell holds).
    """
    settings.validate()
    if not 0 <= rank < world:
        raise EvalError(f"rank {rank} is outside world size {world}")
    if settings.needs_prior() and prior is None:
        raise EvalError("the methods " + ", ".join(m for m in settings.methods if m != ORACLE and get_method(m).needs_prior)
                        + " need a global prior (build one with `glass prior`)")
    if prior is not None and settings.needs_prior():
        prior.check_matches(model)
    docs = list(docs) if docs is not None else load_texts(settings.corpus)
    items = plan_items(settings, tokenizer, docs)
    key = settings_key(settings, items, model_identity(model), prior)
    journal = None if out_dir is None else journal_path(out_dir, key)
    done: dict[str, list[dict]] = {}
    if journal is not None and rank == 0:
        done = read_journal(journal)
    elif journal is not None and journal.is_file():
        done = _parse_journal(journal.read_text(encoding="utf-8"))[0]
    pending = [it for it in items if it.id not in done]
    if max_items is not None:
        pending = pending[:max_items]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len([it for it in items if it.id not in done]),
               desc=f"eval {settings.model}", unit="batch", disable=not progress or rank != 0)
    rounds = (len(pending) + world - 1) // world
    for rnd in range(rounds):
        i = rnd * world + rank
        mine = evaluate_item(model, tokenizer, pending[i], settings, prior) if i < len(pending) else []
        everyone = gather(mine)
        by_item: dict[str, list[dict]] = {}
        for rec in everyone:
            by_item.setdefault(rec["item"], []).append(rec)
        for item_id, recs in by_item.items():
            done[item_id] = recs
            if journal is not None and rank == 0:
                append_journal(journal, item_id, recs)
        bar.update(len(by_item))
    bar.close()
    records = [rec for it in items if it.id in done for rec in done[it.id]]
    results = aggregate(records, settings, extra)
    if out_dir is not None and rank == 0 and records and (write_partial or all(it.id in done for it in items)):
        write_outputs(out_dir, results, settings, key, plots=plots)
    return EvalRun(records=records, results=results, key=key, items=items)

