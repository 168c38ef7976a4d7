"""The calibration-split case that the selection sweeps score (``refresh_sweep.py``,
``oracle_gap.py``): a model with its cached default prior, prompts cut from the calibration
split of a corpus (never the reported test split; a script that chooses no setting, only
measures one, may ask for the test split), the dense model's greedy continuations
and the dense logits along them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from glass_llm import load_model
from glass_llm.corpora import load_texts
from glass_llm.evaluation.plan import EvalSettings, plan_items
from glass_llm.evaluation.score import generate_references
from glass_llm.prior import Prior, load_prior
from glass_llm.prior_cache import find_cached_prior
from glass_llm.teacher import continuation_logits
from glass_llm.tokens import pad_id


@dataclass
class CalibCase:
    model: nn.Module
    prior: Prior
    prompts: torch.Tensor  # (N, P)
    refs: torch.Tensor  # (N, G): the dense model's greedy continuations
    dense: torch.Tensor  # (N, G, V): the dense logits that predict them


def load_calib_case(model_name: str, corpus: str, prompt_tokens: int, gen_tokens: int, n_prompts: int,
                    split: str = "calib") -> CalibCase:
    model, tok = load_model(model_name)
    path = find_cached_prior(model_name)
    if path is None:
        raise SystemExit(f"no cached default prior: run `glass prior {model_name}` first")
    settings = EvalSettings(model=model_name, corpus=corpus, prompt_tokens=(prompt_tokens,), gen_tokens=gen_tokens,
                            n_prompts=n_prompts, split=split, batch_size=n_prompts)
    prompts = torch.tensor(plan_items(settings, tok, load_texts(corpus))[0].prompts)
    refs = generate_references(model, prompts, gen_tokens, pad_id(tok))
    dense, _ = continuation_logits(model, prompts, refs)
    return CalibCase(model, load_prior(path), prompts, refs, dense)
