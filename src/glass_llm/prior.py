"""Global priors (docs/method.md, section 3): build, save, load and check against a model.

A prior holds, for every FFN block, the activation and impact statistics accumulated
over many tokens, plus metadata that identifies the model it was built for. Files are
safetensors, written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .version import __version__
from .adapters import FFNBlock, down_column_norms, find_ffn_blocks, weight_out_in
from .io import atomic_file
from .calibration_data import Calibration
from .stats import STATISTICS, finalize


class PriorError(ValueError):
    """A prior file is missing, corrupt, or was built for another model."""


@dataclass
class Prior:
    sums: torch.Tensor  # (n_blocks, d_ff) accumulated sum of u^2
    down_norms: torch.Tensor  # (n_blocks, d_ff) ||W_down[:, j]||
    meta: dict = field(default_factory=dict)
    calibration: "Calibration | None" = None  # format 2: selection calibration (calibration_data)

    def scores_for(self, statistic: str, sums: torch.Tensor | None = None) -> torch.Tensor:
        """(n_blocks, d_ff) scores of ``statistic`` from this prior's sums, or from other
        ``sums`` of the same shape over the same model (the calibration's greedy statistic)."""
        sums = self.sums if sums is None else sums
        return torch.stack([finalize(s, statistic, n) for s, n in zip(sums, self.down_norms)])

    @property
    def n_tokens(self) -> int:
        return int(self.meta.get("n_tokens", 0))

    @property
    def fingerprint(self) -> str:
        """12 hex digits of the statistics (the paper's and, where stored, that of greedy text). Two
        builds of one model's default prior on different machines tell apart here: sampling follows
        the model's floating-point logits, which differ in their last bits between CPUs."""
        h = hashlib.sha256(self.sums.detach().float().cpu().numpy().tobytes())
        if self.calibration is not None and self.calibration.greedy_sums is not None:
            h.update(self.calibration.greedy_sums.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:12]

    def check_matches(self, model: nn.Module, blocks: list[FFNBlock] | None = None) -> None:
        ident = model_identity(model, blocks)
        mine = self.meta.get("model", {})
        # Newer priors carry a small probe of weights, compared with a tolerance (the same
        # weights in float32, bfloat16 or float16 round differently); older ones a hash.
        keys = ["n_layers", "d_ff", "hidden_size", "model_type"]
        if "probe" not in mine:
            keys.append("fingerprint")
        for key in keys:
            if mine.get(key) != ident[key]:
                self._mismatch(key, mine.get(key), ident[key])
        if "probe" in mine and not _probes_match(mine["probe"], ident["probe"]):
            self._mismatch("weights", "a probe of other values", "different FFN weights")

    def _mismatch(self, key: str, prior_value, model_value) -> None:
        raise PriorError(
            f"this prior was built for another model ({key}: prior has {prior_value!r}, "
            f"model has {model_value!r}; prior model: {self.meta.get('model', {}).get('name', '?')}). "
            "Build a prior for this model with `glass prior MODEL -o FILE`."
        )


PROBE_RTOL = 2 ** -6  # bf16 keeps 8 significant bits (relative rounding <= 2**-9); fp16 keeps 11


def _probes_match(a: list[float], b: list[float]) -> bool:
    if len(a) != len(b):
        return False
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return bool(((x - y).abs() <= PROBE_RTOL * torch.maximum(x.abs(), y.abs()) + 1e-6).all())


def model_identity(model: nn.Module, blocks: list[FFNBlock] | None = None) -> dict:
    """Architecture, sizes, a fingerprint of the FFN weights (bf16-rounded) and a probe of
    64 weights that ``check_matches`` compares with a tolerance, so the same weights
    loaded in float32, bfloat16 or float16 are recognised."""
    blocks = blocks if blocks is not None else find_ffn_blocks(model)
    h = hashlib.sha256()
    probe: list[float] = []
    for b in (blocks[0], blocks[-1]):
        w = weight_out_in(b.output_module).detach()[:16, :64]
        h.update(w.to(torch.bfloat16).float().cpu().numpy().tobytes())
        probe += [round(float(v), 7) for v in w[0, :32].float().cpu()]
    config = getattr(model, "config", None)
    return {
        "name": getattr(config, "_name_or_path", "") or type(model).__name__,
        "model_type": getattr(config, "model_type", type(model).__name__),
        "n_layers": len(blocks),
        "d_ff": blocks[0].d_ff,
        "hidden_size": weight_out_in(blocks[0].output_module).shape[0],
        "fingerprint": h.hexdigest()[:16],
        "probe": probe,
    }


def save_prior(prior: Prior, path: str | os.PathLike) -> Path:
    """Write atomically: a crash never leaves a half-written file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "activation_sumsq": prior.sums.float().contiguous(),
        "down_col_norms": prior.down_norms.float().contiguous(),
    }
    for stat in STATISTICS:
        tensors[stat] = prior.scores_for(stat).contiguous()
    meta = dict(prior.meta)
    meta.setdefault("glass_llm_version", __version__)
    meta["format_version"] = prior.calibration.format_version if prior.calibration is not None else 1
    if prior.calibration is not None:
        tensors.update(prior.calibration.to_tensors())
        meta["calibration"] = prior.calibration.meta
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"glass_prior": json.dumps(meta, sort_keys=True)})
    return path


def load_prior(path: str | os.PathLike) -> Prior:
    path = Path(path)
    if not path.is_file():
        raise PriorError(f"prior file {path} does not exist; build one with `glass prior MODEL -o {path}`")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            raw = (fh.metadata() or {}).get("glass_prior")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PriorError(
            f"prior file {path} is corrupt or incomplete ({err}); delete it and rebuild with `glass prior`"
        ) from None
    if raw is None or "activation_sumsq" not in tensors or "down_col_norms" not in tensors:
        raise PriorError(f"{path} is a safetensors file but not a glass-llm prior; rebuild it with `glass prior`")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise PriorError(f"prior file {path} has unreadable metadata; rebuild it with `glass prior`") from None
    sums, norms = tensors["activation_sumsq"], tensors["down_col_norms"]
    if sums.shape != norms.shape or sums.dim() != 2 or not torch.isfinite(sums).all():
        raise PriorError(f"prior file {path} holds inconsistent tables; rebuild it with `glass prior`")
    try:
        # the calibration's own metadata lives on ``prior.calibration.meta``, as in a prior just built
        calibration = Calibration.from_tensors(tensors, meta.pop("calibration", None))
    except ValueError as err:
        raise PriorError(f"prior file {path}: {err}; rebuild it with `glass prior`") from None
    return Prior(sums=sums, down_norms=norms, meta=meta, calibration=calibration)


def prior_from_sums(model: nn.Module, sums: list[torch.Tensor], n_tokens: int, source: dict,
                    blocks: list[FFNBlock] | None = None) -> Prior:
    blocks = blocks if blocks is not None else find_ffn_blocks(model)
    return Prior(
        sums=torch.stack([s.float().cpu() for s in sums]),
        down_norms=torch.stack([down_column_norms(b).cpu() for b in blocks]),
        meta={"model": model_identity(model, blocks), "n_tokens": int(n_tokens), "source": source,
              "glass_llm_version": __version__},
    )
