"""Drop-in replacements for an FFN's projections that can record, mask or slice neurons.

``NeuronInput`` wraps an input projection (gate/up/fc1/c_fc, or a fused gate_up);
``NeuronOutput`` wraps the output projection (down/fc2/c_proj), whose input is the
intermediate activation ``z``. The owning MLP's own ``forward`` runs unchanged, so
the activation function, gating and any architecture detail stay the model's.

Both wrappers of one block share a ``BlockState``. Modes:

* ``dense``  - call the original projection (bit-identical to the untouched model);
* ``record`` - dense, and the output wrapper adds the prompt statistic of ``z``;
* ``masked`` - dense weights, unselected neurons zeroed (the reference path);
* ``sliced`` - physically smaller weights: one set (2-D, ``F.linear``) or one set
  per batch row (3-D, batched matmul).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import weight_out_in
from .stats import accumulate_activation

MODES = ("dense", "record", "masked", "sliced")


@dataclass
class BlockState:
    """Per-block state shared by its wrappers for the current request."""

    d_ff: int
    mode: str = "dense"
    token_mask: torch.Tensor | None = None  # (B, T) prompt mask while recording
    sums: torch.Tensor | None = None  # (B, d_ff) accumulated statistic
    neuron_mask: torch.Tensor | None = None  # (S, d_ff) for the masked path
    selected: torch.Tensor | None = None  # (S, k) chosen neuron indices
    extra: dict = field(default_factory=dict)


class NeuronInput(nn.Module):
    """Wraps a projection whose output channels are neurons (``fused`` blocks of d_ff)."""

    def __init__(self, original: nn.Module, state: BlockState, fused: int = 1):
        super().__init__()
        self.original = original
        self.state = state
        self.fused = fused
        self.weight_c: torch.Tensor | None = None
        self.bias_c: torch.Tensor | None = None

    def compact(self, selected: torch.Tensor) -> None:
        """Gather the rows of the selected neurons: selected is (S, k)."""
        d_ff = self.state.d_ff
        rows = torch.cat([selected + i * d_ff for i in range(self.fused)], dim=-1)
        w = weight_out_in(self.original).detach()
        b = getattr(self.original, "bias", None)
        if rows.shape[0] == 1:
            self.weight_c = w.index_select(0, rows[0]).contiguous()
            self.bias_c = None if b is None else b.detach().index_select(0, rows[0])
        else:
            self.weight_c = w[rows]  # (S, k', d_in)
            self.bias_c = None if b is None else b.detach()[rows]  # (S, k')

    def release(self) -> None:
        self.weight_c = None
        self.bias_c = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state.mode != "sliced":
            return self.original(x)
        w = self.weight_c
        if w.dim() == 2:
            return F.linear(x, w, self.bias_c)
        y = torch.bmm(x, w.transpose(1, 2))
        if self.bias_c is not None:
            y = y + self.bias_c.unsqueeze(1)
        return y


class NeuronOutput(nn.Module):
    """Wraps the projection whose input channels are neurons; sees ``z`` directly."""

    def __init__(self, original: nn.Module, state: BlockState):
        super().__init__()
        self.original = original
        self.state = state
        self.weight_c: torch.Tensor | None = None

    def compact(self, selected: torch.Tensor) -> None:
        w = weight_out_in(self.original).detach()  # (d_out, d_ff)
        if selected.shape[0] == 1:
            self.weight_c = w.index_select(1, selected[0]).contiguous()  # (d_out, k)
        else:
            self.weight_c = w.t()[selected]  # (S, k, d_out)

    def release(self) -> None:
        self.weight_c = None

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.original, "bias", None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        st = self.state
        mode = st.mode
        if mode == "sliced":
            w = self.weight_c
            if w.dim() == 2:
                return F.linear(z, w, self.bias)
            y = torch.bmm(z, w)
            return y if self.bias is None else y + self.bias
        if mode == "record":
            sums = accumulate_activation(z, st.token_mask)
            st.sums = sums if st.sums is None else st.sums + sums
        elif mode == "masked":
            z = z * st.neuron_mask.unsqueeze(1).to(z.dtype)
        return self.original(z)
