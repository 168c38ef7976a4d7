"""Shared fixtures: the real SmolLM2-135M-Instruct model and a small self-sampled prior.

The model is converted from its GGUF package once and cached (see glass_llm.models);
the prior is built once per machine into the same cache.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm():
    from glass_llm import load_model

    model, tok = load_model("smollm2-135m")
    return model, tok


@pytest.fixture(scope="session")
def smollm_prior(smollm):
    from glass_llm.build import get_or_build_prior

    model, tok = smollm
    return get_or_build_prior(model, tok, "smollm2-135m", n_tokens=2048, progress=False)
