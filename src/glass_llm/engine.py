"""Apply GLASS to a transformers causal LM in place, and undo it.

    handle = apply_glass(model, GlassConfig(method="glass", density=0.5, prior=prior))
    model.generate(...)          # prefill dense, select once, decode with sliced FFNs
    handle.remove()              # the model is exactly the original again

The FFN projections are swapped for wrappers (``sliced``); a forward pre-hook on the
model tells a prefill (empty KV cache: a new request) from a decode step. Prefill runs
dense and records the prompt statistic; the first decode step selects the neurons of
every block and gathers their compact weights; later steps use them. With a dense start
(``dense_start=W``) the first W generated tokens also run dense and are recorded as if
they were part of the prompt; the selection follows them.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .adapters import FFNBlock, compute_dtype, down_column_norms, ffn_intermediate, find_ffn_blocks
from .config import PATHS, GlassConfig, refresh_interval  # noqa: F401  (PATHS, GlassConfig re-exported)
from .errors import GlassError
from .guard import LoopGuard, stop_ids_of
from .method_inputs import method_inputs
from .methods import MethodSpec
from .quant import Int8Linear, quantize_linears
from .selection import Selector, build_selector
from .compensation import linear_inputs, running_mean, set_compensation, set_linear_compensation
from .sliced import BlockState, NeuronInput, NeuronOutput, compact_block, update_compact
from .stats import accumulate_activation, accumulate_signed, recency_weights


class GlassHandle:
    """The applied state. ``remove()`` (or leaving a ``with`` block) undoes everything."""

    def __init__(self, model: nn.Module, config: GlassConfig, blocks: list[FFNBlock], spec: MethodSpec,
                 lam: float, statistic: str, selector: Selector, comp_means: list[torch.Tensor] | None = None):
        self.model = model
        self.config = config
        self.blocks = blocks
        self.spec = spec
        self.lam = lam
        self.statistic = statistic
        self.selector = selector
        self.densities = config.density_for(len(blocks))
        self.k = selector.k
        self.active = not spec.dense and any(k < b.d_ff for k, b in zip(self.k, blocks))
        self.states = [BlockState(d_ff=b.d_ff) for b in blocks]
        self.devices = selector.devices
        # compensation: each block's mean activation on its own device (with comp_linear also a covariance: below)
        linear = comp_means is not None and spec.comp_linear
        self.comp_means = (None if comp_means is None else [(m[1] if linear else m).to(device=dev, dtype=torch.float32)
                                                            for m, dev in zip(comp_means, self.devices)])
        self.ridge = config.ridge_of(spec)
        # with comp_tokens > 0 that mean follows the generated tokens, the prior's counted as comp_tokens
        # tokens; signed_tokens: the generated tokens behind the signed sums, weighted by recency
        self.comp_tokens = config.comp_tokens_of(spec) if comp_means is not None and selector.uses_prompt else 0.0
        self.signed_tokens = 0.0
        self._originals: list[tuple[nn.Module, str, nn.Module]] = []
        self._outputs: list[NeuronOutput] = []
        self._inputs: list[list[NeuronInput]] = []
        self._hooks: list = []
        self.phase = "idle"  # idle -> prefill -> decode
        self.selections: list[torch.Tensor] | None = None
        self.prompt_tokens: torch.Tensor | None = None  # (B,) unpadded prompt tokens per row
        self.select_s = 0.0  # wall time of the last selection (device-synchronised)
        # mask refresh: generated tokens between re-selections (0: off); static methods never refresh
        self.refresh_every = config.refresh_every(spec) if selector.uses_prompt else 0
        self.refresh_growth = config.refresh_growth_of(spec)
        self.refresh_halflife = config.refresh_halflife_of(spec)
        self.schedule_halflife = config.schedule_halflife_of(spec)
        self.dense_start = config.dense_start_of(spec)
        self.prompt_halflife = config.prompt_halflife_of(spec)
        self._dense_left = 0  # generated tokens still to decode densely before the first selection
        self.guard: LoopGuard | None = None  # with loop_guard: this request's repeated 4-grams (guard.py)
        # tokens behind the local statistic, each weighted by its recency (B,); the adaptive lam reads it
        self.seen_tokens: torch.Tensor | None = None
        self.refreshes, self.refresh_s = 0, 0.0  # re-selections of this request and their wall time
        self._since = self._generated = self._interval = 0
        self._quantized: list[tuple[nn.Module, str, nn.Module]] = []
        if config.weights == "int8":  # every projection, also for the dense method
            self._quantized = quantize_linears(model)
        # with comp_linear: per block (covariance, mean, W_out @ covariance) on its device, None where the mean alone
        self.comp_cov = linear_inputs(comp_means, self.devices, blocks) if linear else None
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
        self._hooks = [self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True),
                       self.model.register_forward_hook(self._post_forward, with_kwargs=True)]

    def remove(self) -> None:
        """Restore the original modules; the model computes exactly as before."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for owner, name, orig in reversed(self._originals):
            setattr(owner, name, orig)
        self._originals = []
        for owner, name, orig in reversed(self._quantized):
            setattr(owner, name, orig)
        self._quantized = []
        self._release()
        for st in self.states:
            st.release_compact()
        self.active = False

    def __enter__(self) -> "GlassHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _release(self) -> None:
        """Forget the current request (compact buffers stay allocated for the next one)."""
        for st in self.states:
            st.mode, st.sums, st.token_mask, st.neuron_mask, st.selected = "dense", None, None, None, None
            st.keep_inputs, st.seen_sums, st.keep_signed, st.signed_sums = False, None, False, None
            st.inputs.clear()
        self.refreshes, self.refresh_s, self.seen_tokens, self.signed_tokens = 0, 0.0, None, 0.0
        self._dense_left = 0

    # request state machine -------------------------------------------------------
    # Both hooks return at once inside a compiled region: transformers compiles only the
    # decode forward, where the neuron sets are already chosen and nothing changes.
    def _pre_forward(self, module, args, kwargs):
        if torch.compiler.is_compiling():
            if self.phase == "prefill" and self._dense_left:
                raise GlassError("a dense start records its first generated tokens between decode steps and "
                                 "cannot run inside a compiled decode step; turn off either compile or dense_start")
            if self.guard is not None:
                raise GlassError("the loop guard switches decode steps between dense and sparse FFNs and cannot run "
                                 "inside a compiled decode step; turn off either compile or loop_guard")
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0 if cache is None else int(cache.get_seq_length())
        if past == 0:
            self.begin_request(ids.shape[0], ids.shape[1], kwargs.get("attention_mask"), ids.device)
        elif self.phase == "prefill":
            if self._dense_left:
                self._record_dense_start(ids.shape[1])
            else:
                self.select()
        elif self.phase == "idle":
            raise GlassError("a decode step arrived before any prefill; start with the full prompt and an empty cache")
        if self.phase == "decode" and self.refresh_every:
            self._advance(ids.shape[1])
        if self.guard is not None and past:  # after a refresh, which sets the sparse mode
            dense = self.guard.step(ids, check=self.phase == "decode")
            if self.phase == "decode":
                for st in self.states:
                    st.mode = "dense" if dense else ("sliced" if self.config.path == "sliced" else "masked")
        return None

    def _post_forward(self, module, args, kwargs, output):
        # Select right after a prefill that keeps a KV cache, so that no decode step
        # (compiled or not) carries selection work; a forward without a cache cannot be
        # followed by a decode step and keeps its statistic for a later call.
        if (not torch.compiler.is_compiling() and self.phase == "prefill" and not self._dense_left
                and kwargs.get("use_cache") is not False):
            self.select()
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
        self.prompt_tokens = token_mask.sum(1).float()
        if self.prompt_halflife:  # prompts are left-padded: the last position is every row's last token
            token_mask = token_mask * recency_weights(length, self.prompt_halflife)[0].to(token_mask.device)
        if self.selector.uses_prompt:
            for st, mask in zip(self.states, self._per_device(lambda dev: token_mask.to(dev, torch.float32))):
                st.mode, st.token_mask = "record", mask
        self.phase = "prefill"
        self.selections = None
        self._dense_left = self.dense_start
        self.guard = LoopGuard(batch, self.config.loop_guard, stop_ids_of(self.model)) if self.config.loop_guard else None

    def _record_dense_start(self, n: int) -> None:
        """``n`` generated tokens enter a dense forward before the first selection: record
        them with the prompt (every row has all ``n`` of them)."""
        if n > self._dense_left:
            raise GlassError(
                f"a decode forward of {n} tokens crosses the end of the dense start ({self._dense_left} generated "
                f"tokens left before the first selection); feed at most that many tokens per forward")
        if self.selector.uses_prompt:
            rows = int(self.prompt_tokens.shape[0])
            for st, mask in zip(self.states, self._per_device(lambda dev: torch.ones(rows, n, device=dev))):
                st.token_mask, st.keep_signed = mask, self.comp_tokens > 0
            self.signed_tokens += n
        self.prompt_tokens = self.prompt_tokens + n
        self._dense_left -= n

    def _per_device(self, make) -> list[torch.Tensor]:
        """One tensor per block, ``make(device)`` called once per device the blocks live on."""
        made: dict = {}
        return [made[dev] if dev in made else made.setdefault(dev, make(dev)) for dev in self.devices]

    @torch.no_grad()
    def select(self) -> list[torch.Tensor]:
        """Choose every block's neurons from the recorded prompt and build compact weights."""
        t0 = _synced_time(self.devices)
        uses_prompt = self.selector.uses_prompt
        selections = self.selector.choose_all([st.sums for st in self.states] if uses_prompt else
                                              [None] * len(self.states), self.prompt_tokens)
        self.seen_tokens = self.prompt_tokens.clone()
        for i, (st, chosen) in enumerate(zip(self.states, selections)):
            self._use(i, chosen)
            st.seen_sums, st.sums, st.token_mask = (st.sums if self.refresh_every else None), None, None
            st.keep_signed, st.signed_sums = False, (st.signed_sums if self.refresh_every else None)
            st.keep_inputs, st.rows = bool(self.refresh_every), int(self.prompt_tokens.shape[0])
        self.selections = selections
        self.phase = "decode"
        self._since, self._generated, self._interval = 0, 0, self.refresh_interval(0)
        self.select_s = _synced_time(self.devices) - t0
        return selections

    def _use(self, i: int, chosen: torch.Tensor, incremental: bool = False) -> None:
        """Decode block ``i`` with the neurons ``chosen`` (S, k) from now on; ``incremental``
        (a refresh) rewrites only the compact slots whose neuron changed."""
        st = self.states[i]
        st.selected = chosen
        if self.config.path == "sliced":
            # a linear prediction rewrites every kept column of the output weight (in the order of chosen)
            incremental = incremental and (self.comp_cov is None or self.comp_cov[i] is None)
            if not (incremental and update_compact(st, self._inputs[i], self._outputs[i], chosen)):
                compact_block(st, self._inputs[i], self._outputs[i], chosen)
            st.mode = "sliced"
        else:
            dtype = compute_dtype(self._outputs[i].original)
            mask = torch.zeros(chosen.shape[0], self.blocks[i].d_ff, dtype=dtype, device=chosen.device)
            st.neuron_mask = mask.scatter_(1, chosen, 1.0)
            st.mode = "masked"
        merge = self.config.path == "sliced"
        if self.comp_cov is not None and self.comp_cov[i] is not None:
            cov, prior_mean, p = self.comp_cov[i]
            mean = running_mean(prior_mean, st.signed_sums, chosen.shape[0], self.signed_tokens, self.comp_tokens)
            set_linear_compensation(st, self._outputs[i].original, chosen, cov, mean, p, self.ridge, merge=merge)
        elif self.comp_means is not None:
            mean = running_mean(self.comp_means[i], st.signed_sums, chosen.shape[0], self.signed_tokens, self.comp_tokens)
            set_compensation(st, self._outputs[i].original, chosen, mean, merge=merge)

    # mask refresh ------------------------------------------------------------------
    def refresh_interval(self, n: int) -> int:
        """Generated tokens between selection ``n`` (0: the prompt's) and the next one."""
        return refresh_interval(self.refresh_every, self.refresh_growth, n)

    def _advance(self, n: int) -> None:
        """Count ``n`` tokens entering a decode forward; re-select first when the current
        interval's tokens have passed since the last selection."""
        if self._since >= self._interval:
            self.refresh()
        R = self._interval
        if self._since + n > R:
            raise GlassError(
                f"a decode forward of {n} tokens crosses a mask refresh (every {R} generated tokens, "
                f"{R - self._since} left before the next one); feed at most that many tokens per forward")
        self._since += n

    @torch.no_grad()
    def refresh(self) -> list[torch.Tensor]:
        """Re-select every block's neurons from the prompt's statistic plus that of every token
        generated so far, and refill the compact weights in place.

        The kept FFN inputs of the tokens since the last selection go through one dense pass
        per block (the original projections and the layout's activation); their statistic is
        added to the running sums, so the local view covers the prompt and all generated
        tokens, and the adaptive lam sees their total count. With a half-life
        (``refresh_halflife``) every token is weighted by its age in generated tokens
        (``stats.recency_weights``; every prompt token as old as the last one), and the
        count is the weights' sum. With ``schedule_halflife`` a per-layer schedule keeps
        ``2 ** (-g / schedule_halflife)`` of its departure from one density for all, ``g`` the
        tokens generated since the first selection (``Selector.counts``).
        """
        t0 = _synced_time(self.devices)
        weights, fade = recency_weights(self._since, self.refresh_halflife)
        self._generated += self._since
        self.seen_tokens = self.seen_tokens * fade + float(weights.sum())
        self.signed_tokens = self.signed_tokens * fade + float(weights.sum())
        k = (self.selector.counts(2.0 ** (-self._generated / self.schedule_halflife)) if self.schedule_halflife
             else self.selector.k)
        for i, (st, block) in enumerate(zip(self.states, self.blocks)):
            if st.inputs:
                z = ffn_intermediate(block, torch.cat(st.inputs, dim=1), [w.original for w in self._inputs[i]])
                w = weights.to(z.device).expand(z.shape[0], -1) if self.refresh_halflife else None
                st.seen_sums = (st.seen_sums * fade if fade != 1.0 else st.seen_sums) + accumulate_activation(z, w)
                if self.comp_tokens:
                    signed = accumulate_signed(z, w)
                    st.signed_sums = signed if st.signed_sums is None else st.signed_sums * fade + signed
                st.inputs.clear()
        selections = self.selector.choose_all([st.seen_sums for st in self.states], self.seen_tokens, k)
        for i, chosen in enumerate(selections):
            self._use(i, chosen, incremental=True)
        self.selections = selections
        self._since = 0
        self.refreshes += 1
        self._interval = self.refresh_interval(self.refreshes)
        self.refresh_s += _synced_time(self.devices) - t0
        return selections


def _synced_time(devices) -> float:
    """``time.perf_counter()`` after every CUDA device in ``devices`` has finished its work."""
    import time

    for dev in {d for d in devices if d.type == "cuda"}:
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def apply_glass(model: nn.Module, config: GlassConfig | None = None, **overrides) -> GlassHandle:
    """Sparsify ``model``'s FFN blocks in place for generation; returns the undo handle."""
    config = replace(config or GlassConfig(), **overrides)
    spec, lam, statistic = config.resolved()
    if any(isinstance(m, (NeuronInput, NeuronOutput, Int8Linear)) for m in model.modules()):
        raise GlassError("GLASS is already applied to this model; call handle.remove() first")
    blocks = find_ffn_blocks(model)
    prior, global_scores, comp_means = method_inputs(model, blocks, config, spec, lam, statistic)
    down_norms = [down_column_norms(b) for b in blocks] if statistic == "impact" else None
    selector = build_selector(blocks, config, spec, lam, statistic, global_scores, down_norms, prior=prior)
    return GlassHandle(model, config, blocks, spec, lam, statistic, selector, comp_means)
