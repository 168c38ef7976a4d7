"""Apply GLASS to a transformers causal LM in place, and undo it.

    handle = apply_glass(model, GlassConfig(method="glass", density=0.5, prior=prior))
    model.generate(...)          # prefill dense, select once, decode with sliced FFNs
    handle.remove()              # the model is exactly the original again

The FFN projections are swapped for wrappers (``sliced``); a forward pre-hook on the
model tells a prefill (empty KV cache: a new request) from a decode step. Prefill runs
dense and records the prompt statistic; the first decode step selects the neurons of
every block and gathers their compact weights; later steps use them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
from torch import nn

from .adapters import FFNBlock, down_column_norms, find_ffn_blocks
from .errors import UserError
from .methods import DEFAULT_LAM, GLOBAL_SOURCES, MethodSpec, get_method
from .prior import Prior, load_prior
from .ranking import check_density, check_lam, keep_count, ranks, select
from .sliced import BlockState, NeuronInput, NeuronOutput, compact_block
from .stats import STATISTICS, finalize

PATHS = ("sliced", "masked")


class GlassError(RuntimeError, UserError):
    """GLASS cannot run in the requested way."""


@dataclass(frozen=True)
class GlassConfig:
    """What to apply. ``lam``/``statistic`` default to the method's own settings.

    density: one fraction for every FFN block, or a sequence with one per block.
    path: "sliced" (physically smaller weights, the fast path) or "masked" (unselected
    neurons zeroed, the reference path). share_batch: one neuron set for the whole batch,
    chosen from the rows' combined statistic (faster decode for large batches).
    """

    method: str = "glass"
    density: float | tuple[float, ...] = 0.5
    lam: float | None = None
    statistic: str | None = None
    prior: Prior | str | os.PathLike | None = None
    path: str = "sliced"
    share_batch: bool = False
    seed: int = 0

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
        if self.path not in PATHS:
            raise ValueError(f"unknown path {self.path!r}; choose 'sliced' or 'masked'")
        return spec, lam, statistic


class GlassHandle:
    """The applied state. ``remove()`` (or leaving a ``with`` block) undoes everything."""

    def __init__(self, model: nn.Module, config: GlassConfig, blocks: list[FFNBlock], spec: MethodSpec,
                 lam: float, statistic: str, global_scores: list[torch.Tensor] | None):
        self.model = model
        self.config = config
        self.blocks = blocks
        self.spec = spec
        self.lam = lam
        self.statistic = statistic
        self.densities = config.density_for(len(blocks))
        self.k = [keep_count(d, b.d_ff) for d, b in zip(self.densities, blocks)]
        self.active = not spec.dense and any(k < b.d_ff for k, b in zip(self.k, blocks))
        self._global = global_scores
        self._global_ranks = None if global_scores is None else [ranks(g) for g in global_scores]
        self._down_norms = [down_column_norms(b) for b in blocks] if statistic == "impact" else None
        self.states = [BlockState(d_ff=b.d_ff) for b in blocks]
        self._originals: list[tuple[nn.Module, str, nn.Module]] = []
        self._outputs: list[NeuronOutput] = []
        self._inputs: list[list[NeuronInput]] = []
        self._hook = None
        self.phase = "idle"  # idle -> prefill -> decode
        self.selections: list[torch.Tensor] | None = None
        if self.active:
            self._install()

    # lifecycle -------------------------------------------------------------------
    def _install(self) -> None:
        for block, state in zip(self.blocks, self.states):
            ins = []
            for part, name in enumerate(block.layout.inputs):
                orig = block.projection(name)
                wrapper = NeuronInput(orig, state, fused=block.layout.fused, part=part)
                self._originals.append((block.owner, name, orig))
                setattr(block.owner, name, wrapper)
                ins.append(wrapper)
            orig = block.output_module
            out = NeuronOutput(orig, state)
            self._originals.append((block.owner, block.layout.output, orig))
            setattr(block.owner, block.layout.output, out)
            self._inputs.append(ins)
            self._outputs.append(out)
        self._hook = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def remove(self) -> None:
        """Restore the original modules; the model computes exactly as before."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for owner, name, orig in reversed(self._originals):
            setattr(owner, name, orig)
        self._originals = []
        self._release()
        self.active = False

    def __enter__(self) -> "GlassHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _release(self) -> None:
        for st in self.states:
            st.release_compact()
            st.mode, st.sums, st.token_mask, st.neuron_mask, st.selected = "dense", None, None, None, None

    # request state machine -------------------------------------------------------
    def _pre_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0 if cache is None else int(cache.get_seq_length())
        if past == 0:
            self.begin_request(ids.shape[0], ids.shape[1], kwargs.get("attention_mask"), ids.device)
        elif self.phase == "prefill":
            self.select()
        elif self.phase == "idle":
            raise GlassError("a decode step arrived before any prefill; start with the full prompt and an empty cache")
        return None

    def begin_request(self, batch: int, length: int, attention_mask: torch.Tensor | None, device) -> None:
        """A new prompt: dense prefill that records the local statistic."""
        self._release()
        if length == 0:
            raise ValueError("empty prompt: GLASS chooses neurons from the prompt, give it at least one token")
        if attention_mask is not None and attention_mask.dim() == 2:
            token_mask = attention_mask[:, -length:]
            empty = (token_mask.sum(1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"empty prompt in batch row(s) {empty}: every row needs at least one unpadded token")
        else:
            token_mask = torch.ones(batch, length, device=device)
        for st in self.states:
            st.mode, st.token_mask = "record", token_mask
        self.phase = "prefill"
        self.selections = None

    @torch.no_grad()
    def select(self) -> list[torch.Tensor]:
        """Choose every block's neurons from the recorded prompt and build compact weights."""
        selections = []
        for i, (st, block) in enumerate(zip(self.states, self.blocks)):
            local = None
            if self.lam > 0:
                if st.sums is None:
                    raise GlassError("no prompt statistic was recorded; was the prompt empty?")
                sums = st.sums.sum(0, keepdim=True) if self.config.share_batch else st.sums
                local = finalize(sums, self.statistic, None if self._down_norms is None else self._down_norms[i])
            glob = None if self._global is None else self._global[i]
            if self.lam == 0:
                chosen = select(None, glob, 0.0, 1.0, k=self.k[i]).unsqueeze(0)
            else:
                chosen = select(local, glob, self.lam, 1.0, k=self.k[i])
            chosen = chosen.to(self._outputs[i].original.weight.device)
            st.selected = chosen
            if self.config.path == "sliced":
                compact_block(st, self._inputs[i], self._outputs[i], chosen)
                st.mode = "sliced"
            else:
                mask = torch.zeros(chosen.shape[0], block.d_ff, device=chosen.device)
                st.neuron_mask = mask.scatter_(1, chosen, 1.0)
                st.mode = "masked"
            st.sums, st.token_mask = None, None
            selections.append(chosen)
        self.selections = selections
        self.phase = "decode"
        return selections


def apply_glass(model: nn.Module, config: GlassConfig | None = None, **overrides) -> GlassHandle:
    """Sparsify ``model``'s FFN blocks in place for generation; returns the undo handle."""
    config = replace(config or GlassConfig(), **overrides)
    spec, lam, statistic = config.resolved()
    if any(isinstance(m, (NeuronInput, NeuronOutput)) for m in model.modules()):
        raise GlassError("GLASS is already applied to this model; call handle.remove() first")
    blocks = find_ffn_blocks(model)
    global_scores = None
    if not spec.dense and lam < 1 and spec.global_source is not None:
        prior = config.prior
        if isinstance(prior, (str, os.PathLike)):
            prior = load_prior(prior)
        if spec.global_source == "prior" and prior is not None:
            prior.check_matches(model, blocks)
            if prior.sums.shape[0] != len(blocks):
                raise GlassError("prior and model disagree on the number of FFN blocks")
        global_scores = GLOBAL_SOURCES[spec.global_source](blocks, prior, statistic, config.seed)
        global_scores = [g.float() for g in global_scores]
    return GlassHandle(model, config, blocks, spec, lam, statistic, global_scores)
