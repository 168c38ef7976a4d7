"""Drop-in replacements for an FFN's projections that can record, mask or slice neurons.

``NeuronInput`` wraps an input projection (gate/up/fc1/c_fc, or a fused gate_up);
``NeuronOutput`` wraps the output projection (down/fc2/c_proj), whose input is the
intermediate activation ``z``. The owning MLP's own ``forward`` runs unchanged, so
the activation function, gating and any architecture detail stay the model's.

Both wrappers of one block share a ``BlockState``. Modes:

* ``dense``  - call the original projection (bit-identical to the untouched model);
* ``record`` - dense, and the output wrapper adds the prompt statistic of ``z``;
* ``masked`` - dense weights, unselected neurons zeroed (the reference path);
* ``sliced`` - physically smaller weights. One set for the batch: 2-D weights and
  ``F.linear``. One set per batch row: by default ("union") 2-D weights over the union
  of the rows' sets, with each row's other neurons zeroed before the output projection
  (the weights are read once per step, as in the dense model); or ("bmm") 3-D weights,
  one slice per row, and a batched matmul (reads batch x density of the weights).

Sliced weights are gathered once per request by ``compact_block`` into buffers that the
state keeps for as long as GLASS is applied: with one neuron set for the batch the
shapes depend only on the density, so every request writes into the same tensors (a
compiled decode step is reused, and addresses stay fixed). The compact rows of all input
projections of a block (gate and up) are stacked in one matrix; each input wrapper
reads its own contiguous part of it. A decode step does no Python work beyond the
wrappers' mode check, unless mask refresh is on: then the first input wrapper also keeps
the step's FFN input (``keep_inputs``) for the next re-selection.

With int8 projections (``quant.Int8Linear``) the compact weights are int8 too: the kept
rows of the input projections with their own per-row scales (``scale_in``), and the kept
columns of the output projection, whose per-row scales (``scale_out``) stay whole.

Compensation for the neurons a selection leaves out (``compensation``) reaches the output
wrapper as a bias (``shift_bias``, or ``shift_rows`` per row) and, for a linear prediction
that is not folded into the compact weights, as ``lin_delta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import compute_dtype, weight_out_in
from .quant import Int8Linear, int8_linear
from .stats import accumulate_activation, accumulate_signed

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
    # sliced path: stacked input rows (K, d_in) or (S, K, d_in), K = sum(part_sizes)
    weight_in: torch.Tensor | None = None
    bias_in: torch.Tensor | None = None  # (K,) or (S, K)
    part_sizes: tuple[int, ...] = ()
    part_weights: tuple[torch.Tensor, ...] = ()  # views of weight_in, one per input wrapper
    part_biases: tuple[torch.Tensor | None, ...] = ()
    weight_out: torch.Tensor | None = None  # (d_out, k) or (S, k, d_out)
    bias_out: torch.Tensor | None = None  # the output projection's own bias (not sliced)
    # int8 projections: scales of the stacked input rows (K,), and the output projection's (d_out,)
    scale_in: torch.Tensor | None = None
    part_scales: tuple[torch.Tensor | None, ...] = ()
    scale_out: torch.Tensor | None = None
    row_mask: torch.Tensor | None = None  # (S, U): per-row sets over their union ("union")
    batch_kernel: str = "union"  # per-row sets: "union" (2-D + row mask) or "bmm" (3-D)
    # mask refresh: the decode steps' FFN inputs since the last selection, as (rows, T, d_in)
    keep_inputs: bool = False
    rows: int = 1
    inputs: list[torch.Tensor] = field(default_factory=list)
    seen_sums: torch.Tensor | None = None  # (B, d_ff) statistic of the prompt and the generated tokens so far
    keep_signed: bool = False  # record the generated tokens' signed sums (B, d_ff): a running compensation mean
    signed_sums: torch.Tensor | None = None
    # compensation: the output bias with the left-out neurons' mean output added (d_out,), one set
    # for the batch on the sliced path; or that mean output per row (S, d_out), added after the projection
    shift_bias: torch.Tensor | None = None
    shift_rows: torch.Tensor | None = None
    slots: torch.Tensor | None = None  # (k,) the neuron held in each compact slot (one set for the batch)
    union: torch.Tensor | None = None  # ("union") the neurons of the union, in the order of the compact weights
    # linear compensation (``set_linear_compensation``) where it is not folded into the compact weights:
    # the output gains z @ lin_delta (S, n, d_out), z as the output projection sees it
    lin_delta: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def compact_tensors(self) -> list[torch.Tensor]:
        """The compact weights held for the current request (for memory accounting)."""
        return [t for t in (self.weight_in, self.bias_in, self.scale_in, self.weight_out) if t is not None]

    def release_compact(self) -> None:
        """Drop the compact weights."""
        self.weight_in = self.bias_in = self.weight_out = self.bias_out = self.row_mask = self.slots = None
        self.shift_bias = self.shift_rows = None
        self.scale_in = self.scale_out = None
        self.union = self.lin_delta = None
        self.part_sizes, self.part_weights, self.part_biases, self.part_scales = (), (), (), ()


def _by_row(t: torch.Tensor, rows: int) -> torch.Tensor:
    """View (B*T, n) activations, as some models (OPT) flatten them, as (B, T, n)."""
    return t if t.dim() == 3 else t.view(rows, -1, t.shape[-1])


def _row_scale(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multiply each batch row of ``z`` (B, T, n) or (B*T, n) by its row of ``mask`` (B, n)."""
    return (_by_row(z, mask.shape[0]) * mask.unsqueeze(1)).view(z.shape)


def _row_add(y: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Add to each batch row of ``y`` (B, T, n) or (B*T, n) its row of ``shift`` (B, n) (or one row for all)."""
    return (_by_row(y, shift.shape[0]) + shift.unsqueeze(1)).view(y.shape)


def _project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
             scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + b`` for a 2-D ``w`` (int8 rows with their ``scale``, or float), or per
    batch row for a 3-D float ``w`` (S, out, in)."""
    if scale is not None:
        return int8_linear(x, w, scale, b)
    if w.dim() == 2:
        return F.linear(x, w, b)
    y = torch.bmm(_by_row(x, w.shape[0]), w.transpose(1, 2))
    if b is not None:
        y = y + b.unsqueeze(1)
    return y if x.dim() == 3 else y.reshape(-1, y.shape[-1])


class NeuronInput(nn.Module):
    """Wraps a projection whose output channels are neurons (``fused`` blocks of d_ff).

    ``part`` is this wrapper's position among the block's input projections.
    """

    def __init__(self, original: nn.Module, state: BlockState, fused: int = 1, part: int = 0):
        super().__init__()
        self.original = original
        self.state = state
        self.fused = fused
        self.part = part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.state
        if st.keep_inputs and self.part == 0:
            if torch.compiler.is_compiling():
                raise RuntimeError("mask refresh keeps each decode step's FFN inputs and cannot run inside "
                                   "a compiled decode step; turn off either compile or refresh")
            st.inputs.append(_by_row(x.detach(), st.rows))
        if st.mode != "sliced":
            return self.original(x)
        return _project(x, st.part_weights[self.part], st.part_biases[self.part], st.part_scales[self.part])


class NeuronOutput(nn.Module):
    """Wraps the projection whose input channels are neurons; sees ``z`` directly."""

    def __init__(self, original: nn.Module, state: BlockState):
        super().__init__()
        self.original = original
        self.state = state

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        st = self.state
        mode = st.mode
        if mode == "sliced":
            if st.row_mask is not None:
                z = _row_scale(z, st.row_mask)
            w = st.weight_out
            b = st.bias_out if st.shift_bias is None else st.shift_bias
            if st.scale_out is not None:
                y = int8_linear(z, w, st.scale_out, b)
            elif w.dim() == 2:
                y = F.linear(z, w, b)
            else:
                y = torch.bmm(_by_row(z, w.shape[0]), w)
                if b is not None:
                    y = y + b
                y = y if z.dim() == 3 else y.reshape(-1, y.shape[-1])
            if st.lin_delta is not None:
                y = y + _linear_term(z, st.lin_delta)
            return y if st.shift_rows is None else _row_add(y, st.shift_rows)
        if mode == "record":
            z3 = z if z.dim() == 3 else z.view(*st.token_mask.shape, z.shape[-1])
            st.sums = accumulate_activation(z3, st.token_mask) + (0 if st.sums is None else st.sums)
            if st.keep_signed:  # the dense start's tokens, for a compensation mean that follows the reply
                st.signed_sums = accumulate_signed(z3, st.token_mask) + (0 if st.signed_sums is None else st.signed_sums)
        elif mode == "masked":
            z = _row_scale(z, st.neuron_mask.to(z.dtype))
            y = self.original(z)
            if st.lin_delta is not None:
                y = y + _linear_term(z, st.lin_delta)
            return y if st.shift_rows is None else _row_add(y, st.shift_rows)
        return self.original(z)


def _buffer(old: torch.Tensor | None, like: torch.Tensor, shape: tuple[int, ...], zero: bool = False) -> torch.Tensor:
    """``old`` when it already has this shape, dtype and device (reused in place), else a new tensor."""
    if old is not None and tuple(old.shape) == shape and old.dtype == like.dtype and old.device == like.device:
        return old.zero_() if zero else old
    return like.new_zeros(shape) if zero else like.new_empty(shape)


def _stored_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A projection's weight as stored, (out, in), and its per-row scales (int8) or None."""
    if isinstance(module, Int8Linear):
        return module.weight, module.weight_scale
    return weight_out_in(module).detach(), None


def _input_pieces(inputs: list[NeuronInput], d_ff: int):
    """(weight, bias, row offset, scales) of every neuron block of the input projections, in
    the order they are stacked in the compact matrix, and the number of such blocks per
    wrapper. The weight is as stored (int8 with its per-row scales, or float with None)."""
    pieces: list[tuple[torch.Tensor, torch.Tensor | None, int, torch.Tensor | None]] = []
    fused = []
    for wrapper in inputs:
        w, scale = _stored_weight(wrapper.original)
        b = getattr(wrapper.original, "bias", None)
        for i in range(wrapper.fused):
            pieces.append((w, None if b is None else b.detach(), i * d_ff, scale))
        fused.append(wrapper.fused)
    return pieces, fused


@torch.no_grad()
def update_compact(state: BlockState, inputs: list[NeuronInput], output: NeuronOutput,
                   selected: torch.Tensor) -> bool:
    """Move the compact weights to the set ``selected`` (1, k) by rewriting only the slots
    whose neuron left the set (a refresh usually keeps most neurons). The order of the
    slots does not matter to the result. Returns False (nothing done) when the buffers do
    not hold a full one-set-for-the-batch compaction of this size to start from."""
    k = selected.shape[-1]
    if (selected.shape[0] != 1 or state.slots is None or state.row_mask is not None or state.weight_out is None
            or state.weight_out.dim() != 2 or state.slots.numel() != k):
        return False
    new = selected[0]
    member = torch.zeros(state.d_ff, dtype=torch.bool, device=new.device)
    free = (~member.index_fill_(0, new, True)[state.slots]).nonzero().flatten()  # slots whose neuron left
    if free.numel() == 0:
        return True
    held = member.zero_().index_fill_(0, state.slots, True)
    incoming = new[~held[new]]  # neurons that enter, ascending
    pieces, _ = _input_pieces(inputs, state.d_ff)
    for j, (w, b, off, scale) in enumerate(pieces):
        rows = free + j * k
        src = incoming + off if off else incoming
        state.weight_in.index_copy_(0, rows, w.index_select(0, src))
        if b is not None:
            state.bias_in.index_copy_(0, rows, b.index_select(0, src))
        if scale is not None:
            state.scale_in.index_copy_(0, rows, scale.index_select(0, src))
    w_out, _ = _stored_weight(output.original)
    state.weight_out.index_copy_(1, free, w_out.index_select(1, incoming))
    state.slots[free] = incoming
    return True


@torch.no_grad()
def compact_block(state: BlockState, inputs: list[NeuronInput], output: NeuronOutput,
                  selected: torch.Tensor) -> None:
    """Gather the compact weights of the ``selected`` neurons (S, k) into ``state``.

    S = 1 gives 2-D weights (one neuron set for the batch). S > 1 (one set per row) gives
    2-D weights over the union of the sets plus a row mask (``batch_kernel`` "union"),
    or 3-D weights with one slice per row ("bmm").
    Every piece is gathered straight from the full weight into its place in the stacked
    compact matrix; buffers of the previous request are reused when the shapes agree.
    """
    d_ff = state.d_ff
    if state.batch_kernel not in ("union", "bmm"):
        raise ValueError(f"unknown batch kernel {state.batch_kernel!r}; choose 'union' or 'bmm'")
    pieces, fused = _input_pieces(inputs, d_ff)
    quantized = pieces[0][3] is not None
    if quantized and selected.shape[0] > 1 and state.batch_kernel == "bmm":
        raise ValueError("int8 weights need one weight matrix for the batch: use the 'union' batch kernel "
                         "(the default) or share_batch, not 'bmm'")
    if selected.shape[0] > 1 and state.batch_kernel == "union":
        union = torch.unique(selected)  # sorted
        dtype = compute_dtype(output.original)
        mask = torch.zeros(selected.shape[0], d_ff, dtype=dtype, device=selected.device)
        mask.scatter_(1, selected, 1.0)
        row_mask = mask[:, union].contiguous()
        selected = union.unsqueeze(0)
    else:
        row_mask = union = None
    S, k = selected.shape
    sizes = [f * k for f in fused]
    w0, scale0 = pieces[0][0], pieces[0][3]
    K = k * len(pieces)
    weight_in = _buffer(state.weight_in, w0, (K, w0.shape[1]) if S == 1 else (S, K, w0.shape[1]))
    has_bias = any(b is not None for _, b, _, _ in pieces)
    like = scale0 if quantized else w0  # biases and scales in the compute dtype
    bias_in = _buffer(state.bias_in, like, (K,) if S == 1 else (S, K), zero=True) if has_bias else None
    scale_in = _buffer(state.scale_in, scale0, (K,)) if quantized else None
    for s in range(S):
        for j, (w, b, off, scale) in enumerate(pieces):
            idx = selected[s] + off if off else selected[s]
            rows = slice(j * k, (j + 1) * k)
            torch.index_select(w, 0, idx, out=weight_in[rows] if S == 1 else weight_in[s, rows])
            if b is not None:
                torch.index_select(b, 0, idx, out=bias_in[rows] if S == 1 else bias_in[s, rows])
            if scale is not None:
                torch.index_select(scale, 0, idx, out=scale_in[rows])
    if state.weight_in is not weight_in or state.scale_in is not scale_in:  # new buffers: new views of them
        state.part_weights = tuple(weight_in.split(sizes, dim=-2))
        state.part_biases = (tuple(bias_in.split(sizes, dim=-1)) if bias_in is not None
                             else tuple(None for _ in sizes))
        state.part_scales = (tuple(scale_in.split(sizes)) if scale_in is not None else tuple(None for _ in sizes))
    state.weight_in, state.bias_in, state.scale_in, state.part_sizes = weight_in, bias_in, scale_in, tuple(sizes)
    state.row_mask, state.union = row_mask, union
    w_out, state.scale_out = _stored_weight(output.original)  # (d_out, d_ff); int8 scales stay whole
    b_out = getattr(output.original, "bias", None)
    state.bias_out = None if b_out is None else b_out.detach()
    if S == 1:
        weight_out = _buffer(state.weight_out, w_out, (w_out.shape[0], k))
        torch.index_select(w_out, 1, selected[0], out=weight_out)  # (d_out, k)
    else:
        weight_out = w_out.t()[selected]  # (S, k, d_out)
    state.weight_out = weight_out
    state.slots = selected[0].clone() if S == 1 and row_mask is None else None


def _linear_term(z: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``z @ delta`` per batch row of ``z`` (B, T, n) or (B*T, n); one (1, n, d_out) serves every row."""
    if delta.shape[0] == 1:
        return z @ delta[0]
    y = torch.bmm(_by_row(z, delta.shape[0]), delta)
    return y if z.dim() == 3 else y.reshape(-1, y.shape[-1])
