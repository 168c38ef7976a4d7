"""Find the feed-forward blocks of a transformers model, architecture-agnostically.

A block is described by the names of its input projections (the ones whose output
channels are the FFN neurons, possibly several neuron blocks fused in one matrix) and
its output projection (whose input channels are the neurons). The layouts below cover
the shared attribute names used across transformers: Llama, SmolLM2, Mistral, Qwen2,
Qwen3, Gemma/Gemma3 (``gate_proj``/``up_proj``/``down_proj``), Phi-3 (fused
``gate_up_proj``), GPT-2 (``c_fc``/``c_proj``, Conv1D) and OPT (``fc1``/``fc2``).
A new layout is one more entry in ``LAYOUTS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .quant import Int8Linear


class UnsupportedModelError(ValueError):
    """The model has no feed-forward block that glass-llm knows how to sparsify."""


@dataclass(frozen=True)
class Layout:
    """Attribute names of one FFN layout. ``fused`` is the number of neuron blocks
    stacked in each input projection's output (2 for Phi-3's gate_up_proj)."""

    inputs: tuple[str, ...]
    output: str
    fused: int = 1


LAYOUTS: list[Layout] = [
    Layout(inputs=("gate_proj", "up_proj"), output="down_proj"),
    Layout(inputs=("gate_up_proj",), output="down_proj", fused=2),
    Layout(inputs=("c_fc",), output="c_proj"),
    Layout(inputs=("fc1",), output="fc2"),
]


@dataclass
class FFNBlock:
    """One feed-forward block: the module that owns the projections, and their names."""

    index: int
    path: str
    owner: nn.Module
    layout: Layout
    d_ff: int

    def projection(self, name: str) -> nn.Module:
        return getattr(self.owner, name)

    @property
    def input_modules(self) -> list[nn.Module]:
        return [self.projection(n) for n in self.layout.inputs]

    @property
    def output_module(self) -> nn.Module:
        return self.projection(self.layout.output)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), for nn.Linear and transformers' Conv1D
    (an ``Int8Linear``'s dequantized weight: a new tensor, for statistics only)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D":
        return module.weight.t()
    if isinstance(module, Int8Linear):
        return module.dequantized()
    raise UnsupportedModelError(f"projection of type {type(module).__name__} is not a Linear or Conv1D layer")


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype a projection computes in (its weight's, or an int8 weight's scales')."""
    return module.weight_scale.dtype if isinstance(module, Int8Linear) else module.weight.dtype


def out_features(module: nn.Module) -> int:
    if isinstance(module, Int8Linear):
        return module.out_features
    return weight_out_in(module).shape[0]


def in_features(module: nn.Module) -> int:
    if isinstance(module, Int8Linear):
        return module.in_features
    return weight_out_in(module).shape[1]


def _is_projection(module: object) -> bool:
    return isinstance(module, (nn.Linear, Int8Linear)) or type(module).__name__ == "Conv1D"


def _match(module: nn.Module) -> Layout | None:
    for layout in LAYOUTS:
        names = (*layout.inputs, layout.output)
        if all(_is_projection(getattr(module, n, None)) for n in names):
            return layout
    return None


def find_ffn_blocks(model: nn.Module) -> list[FFNBlock]:
    """All FFN blocks of ``model`` in module order; raises UnsupportedModelError if none."""
    blocks: list[FFNBlock] = []
    skip: tuple[str, ...] = ()
    for path, module in model.named_modules():
        if skip and path.startswith(skip):
            continue
        layout = _match(module)
        if layout is None:
            continue
        out_mod = getattr(module, layout.output)
        d_ff = in_features(out_mod)
        for name in layout.inputs:
            if out_features(getattr(module, name)) != layout.fused * d_ff:
                raise UnsupportedModelError(
                    f"{path}.{name} has {out_features(getattr(module, name))} outputs but "
                    f"{path}.{layout.output} expects {d_ff} neurons"
                )
        blocks.append(FFNBlock(index=len(blocks), path=path, owner=module, layout=layout, d_ff=d_ff))
        skip = (path + ".",) if path else ("",)
    if not blocks:
        known = "; ".join(f"{'/'.join(l.inputs)} -> {l.output}" for l in LAYOUTS)
        raise UnsupportedModelError(
            f"no feed-forward block found in {type(model).__name__}: looked for modules with "
            f"Linear/Conv1D children named {known}. Add a Layout to glass_llm.adapters.LAYOUTS "
            "for this architecture."
        )
    return blocks


# Attribute names under which transformers' FFN owners keep their activation function
# (Llama/Qwen/Gemma ``act_fn``, Phi-3/OPT ``activation_fn``, GPT-2 ``act``).
ACTIVATION_NAMES = ("act_fn", "activation_fn", "act")


def activation_of(block: FFNBlock):
    """The block's activation function, read from its owner module."""
    for name in ACTIVATION_NAMES:
        fn = getattr(block.owner, name, None)
        if callable(fn):
            return fn
    raise UnsupportedModelError(
        f"{block.path} has no activation function under any of the names {', '.join(ACTIVATION_NAMES)}; "
        "mask refresh needs it to recompute the FFN's intermediate activations")


def ffn_intermediate(block: FFNBlock, x: torch.Tensor, inputs: list[nn.Module] | None = None) -> torch.Tensor:
    """The dense intermediate activation ``z`` (the output projection's input) of ``x``.

    ``inputs`` are the input projections to use (default: the block's own; pass the
    original modules while GLASS has wrapped them). Gated layouts compute
    ``act(gate(x)) * up(x)`` (Phi-3: gate and up halves of one fused matrix), plain ones
    ``act(fc(x))``: what the owners' own forwards compute, dropout aside (inference).
    """
    mods = inputs if inputs is not None else block.input_modules
    act = activation_of(block)
    if block.layout.fused == 2:
        gate, up = mods[0](x).chunk(2, dim=-1)
        return act(gate) * up
    if len(mods) == 2:
        return act(mods[0](x)) * mods[1](x)
    return act(mods[0](x))


def down_column_norms(block: FFNBlock) -> torch.Tensor:
    """``||W_down[:, j]||_2`` for every neuron j (float32, shape (d_ff,))."""
    return weight_out_in(block.output_module).detach().float().norm(dim=0)


def magnitude_scores(block: FFNBlock) -> torch.Tensor:
    """Static weight-magnitude score per neuron: the product of the neuron's input-row
    norms over all input projections (``||W_gate[j]|| * ||W_up[j]||`` when gated)."""
    score = torch.ones(block.d_ff, device=weight_out_in(block.output_module).device)
    for mod in block.input_modules:
        rows = weight_out_in(mod).detach().float().norm(dim=1)
        for part in rows.split(block.d_ff):
            score = score * part
    return score
