"""Int8 weight-only quantization: per-output-channel symmetric int8 weights with a float
scale per row, for every linear projection of a model.

``quantize_rows(w)`` gives ``(q, scale)`` with ``w ~= q * scale[:, None]``;
``int8_linear(x, q, scale, bias)`` computes ``x @ (q * scale).T + bias`` as
``(x @ q.T) * scale``, so the dequantized matrix is never stored. ``Int8Linear`` holds one
projection that way. Because the scale belongs to an output channel, the compact FFN
weights of a sparse decode slice exactly (``sliced``): the kept rows of an input
projection keep their own scales, and the kept columns of the output projection leave
its scales unchanged.

``quantize_linears(model)`` swaps every ``nn.Linear`` and transformers ``Conv1D`` for an
``Int8Linear`` and returns what it replaced, so the caller (``apply_glass`` with
``weights="int8"``) can put the original modules back exactly. Whether int8 is also faster
depends on the device's kernels; ``benchmarks/int8_kernels.py`` measures it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = ("float", "int8")


def check_weights(weights: str) -> None:
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights format {weights!r}; choose one of {', '.join(WEIGHTS)}")


@torch.no_grad()
def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``q`` (out, in) int8 in [-127, 127] and ``scale`` (out,) in
    ``w``'s dtype, with ``|w - q * scale| <= scale / 2`` elementwise."""
    if w.dim() != 2:
        raise ValueError(f"int8 quantization takes a 2-D weight, got shape {tuple(w.shape)}")
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(wf / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q, scale.to(w.dtype)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ (q * scale).T + bias`` for int8 rows ``q`` (out, in) and their scales (out,)."""
    y = F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)
    return y if bias is None else y + bias


class Int8Linear(nn.Module):
    """A linear projection with int8 weights and one float scale per output channel.

    ``weight`` is (out_features, in_features) int8 (a Conv1D's transposed weight too);
    ``weight_scale`` (out_features,); ``bias`` as the original's.
    """

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_module(cls, module: nn.Module) -> "Int8Linear":
        """From an ``nn.Linear`` (weight (out, in)) or a transformers ``Conv1D`` (weight (in, out))."""
        w = module.weight.detach()
        q, scale = quantize_rows(w.t() if type(module).__name__ == "Conv1D" else w)
        bias = getattr(module, "bias", None)
        return cls(q, scale, None if bias is None else bias.detach().clone())

    def dequantized(self) -> torch.Tensor:
        """The float weight (out, in) the int8 rows stand for."""
        return self.weight.to(self.weight_scale.dtype) * self.weight_scale.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


def _is_float_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def quantize_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every ``nn.Linear`` / ``Conv1D`` of ``model`` by an ``Int8Linear`` in place.
    Returns ``(parent, name, original)`` for each, in replacement order (undo in reverse)."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if _is_float_projection(child)]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear.from_module(child))
    return targets
