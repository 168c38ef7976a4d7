"""lm-evaluation-harness integration: the ``glass`` model and the offline tasks.

Importing this module registers the model name ``glass`` with the harness
(``lm_eval.api.registry``). The harness finds models only by name and has no plugin
discovery, so something must import this module before the harness looks the name up.
Three ways, none of which changes the harness:

* ``glass lm-eval --model glass --model_args pretrained=smollm2-135m,method=glass,density=0.5 --tasks glass_offline``
  (also reachable as ``python -m glass_llm.lmeval ...``): the harness's own ``run``
  command line, with this module imported and the offline tasks on the include path.
* ``glass_llm.lmeval.simple_evaluate(model="glass", model_args=..., tasks=[...])``:
  the harness's ``simple_evaluate`` with the offline tasks available.
* ``import glass_llm.lmeval`` in your own script, then call ``lm_eval`` as usual.

Model arguments (``--model_args`` keys): ``pretrained`` (alias such as
``smollm2-135m``/``gemma3-270m``, ``.gguf`` file or model folder), ``method``
(dense, griffin, glass, glass-a, glass-i, global, magnitude, random), ``density``,
``lam``, ``statistic``, ``prior`` (a prior file), ``prior_tokens``/``prior_source``
(the cached default prior of every ``glass`` command unless given; see
``prior_cache``), ``path`` (sliced or masked),
``share_batch``, ``dtype``, ``device``, ``batch_size``.

How requests are evaluated
--------------------------
* ``loglikelihood`` (multiple choice): there is no decode phase, so the context plays
  the prompt and the continuation plays the generated text. The context is run densely
  with an empty KV cache and picks the neuron set (GLASS: merged with the prior's
  ranks); the continuation tokens then run through the sliced FFNs over that cache.
  As in real decoding, the first continuation token is predicted by the dense prefill,
  so one-token continuations (BoolQ's " yes"/" no") score exactly as the dense model.
  Each request's neuron set is chosen from its context alone; requests with the same
  context (the choices of one question) share one prefill and so one set. ``batch_size``
  applies to generation; log-likelihood requests are processed one context at a time.
* ``loglikelihood_rolling`` uses the same rule on the harness's windows (the first
  window's context is the single prefix token, so selection there rests on the prior).
* ``generate_until``: real sparse generation, ``model.generate`` with GLASS applied
  (dense prefill of the prompt, sliced FFNs for every generated token).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

try:
    import lm_eval.models  # noqa: F401  (fills the registry before we add to it)
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "glass_llm.lmeval needs the lm-evaluation-harness; install it with:\n    pip install lm-eval==0.4.13"
    ) from err

from ..engine import GlassConfig, apply_glass
from ..lm_eval_tasks import SUITE_TAG, TASK_NAMES, TASKS_DIR
from ..prior import Prior, load_prior

__all__ = ["GlassLM", "TASKS_DIR", "TASK_NAMES", "SUITE_TAG", "task_manager", "simple_evaluate", "main"]

MODEL_NAME = "glass"
logger = logging.getLogger(__name__)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _pick_device(device: str | None) -> str:
    """The device to run on. The harness's command line asks for ``cuda:0`` by default,
    so a CUDA request on a machine without CUDA falls back to the CPU (with a warning)."""
    if device is None or device == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available; the glass model runs on the CPU instead of %s", device)
        return "cpu"
    return str(device)


@register_model(MODEL_NAME)
class GlassLM(HFLM):
    """A harness model that evaluates a causal LM with GLASS (or another method) applied.

    Tokenisation, request batching for generation, chat templates and stop sequences
    are the harness's ``hf`` backend's; what differs is how log-likelihoods are
    computed (see the module docstring) and that generation runs with sparse FFNs.
    ``pretrained`` may be a model name (loaded with :func:`glass_llm.load_model`) or an
    already loaded ``PreTrainedModel``, in which case ``tokenizer`` is required.
    """

    def __init__(
        self,
        pretrained: Any = "smollm2-135m",
        method: str = "glass",
        density: float | str = 0.5,
        lam: float | str | None = None,
        statistic: str | None = None,
        prior: Prior | str | os.PathLike | None = None,
        prior_tokens: int | str | None = None,
        prior_source: str = "self",
        path: str = "sliced",
        share_batch: bool | str = False,
        tokenizer: Any = None,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str | None = 8,
        **kwargs: Any,
    ) -> None:
        if str(batch_size).startswith("auto"):
            raise ValueError("the glass model needs a numeric batch_size (batch_size=auto is not supported)")
        config = GlassConfig(
            method=str(method),
            density=float(density),
            lam=None if lam in (None, "", "None") else float(lam),
            statistic=statistic or None,
            path=str(path),
            share_batch=_as_bool(share_batch),
        )
        spec, resolved_lam, _ = config.resolved()  # bad method/density/lam fail here, before loading
        device = _pick_device(device)
        name: str | None = None
        if isinstance(pretrained, (str, os.PathLike)):
            from ..models import load_model

            name = str(pretrained)
            model, tok = load_model(name, dtype=dtype, device=device)
            if tokenizer is not None and not isinstance(tokenizer, str):
                tok = tokenizer
        else:
            model, tok = pretrained, tokenizer
            if tok is None or isinstance(tok, str):
                raise ValueError("pass the tokenizer object together with an already loaded model")
        super().__init__(pretrained=model, tokenizer=tok, device=device, batch_size=batch_size, **kwargs)
        self.model_name = name
        prior_obj = self._resolve_prior(prior, spec.needs_prior and resolved_lam < 1 and config.density < 1,
                                        None if prior_tokens in (None, "", "None") else int(prior_tokens),
                                        prior_source)
        self.glass_config = replace(config, prior=prior_obj)
        self.method = spec.name
        self.lam = resolved_lam

    def _resolve_prior(self, prior, needed: bool, n_tokens: int | None, source: str) -> Prior | None:
        if isinstance(prior, Prior):
            prior.check_matches(self.model)
            return prior
        if prior not in (None, ""):
            loaded = load_prior(prior)
            loaded.check_matches(self.model)
            return loaded
        if not needed:
            return None
        if self.model_name is None:
            raise ValueError("this method needs a global prior: pass prior=FILE (or a Prior) with a loaded model")
        from ..build import get_or_build_prior

        return get_or_build_prior(self.model, self.tokenizer, self.model_name, source=source, n_tokens=n_tokens)

    # log-likelihood ------------------------------------------------------------------
    @torch.no_grad()
    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Score each (context, continuation): dense prefill of the context, which picks
        the neurons, then the continuation through the sparse FFNs over the cache.

        Requests that share a context (the choices of one question) share one prefill
        and one neuron set; their continuations run as one batch over the copied cache.
        """
        from tqdm.auto import tqdm

        groups: dict[tuple[int, ...], list[int]] = {}
        pairs = [self._truncate(ctx, cont) for _, ctx, cont in requests]
        for i, (ctx, _) in enumerate(pairs):
            groups.setdefault(tuple(ctx), []).append(i)
        # longest first: time estimates err on the safe side and memory peaks early
        order = sorted(groups.items(), key=lambda kv: -(len(kv[0]) + max(len(pairs[i][1]) for i in kv[1])))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="glass loglikelihood")
        # one handle for every group: each group's prefill (an empty cache) selects anew, and the compact
        # buffers of the last group are reused instead of allocated (and page-faulted) again
        with apply_glass(self.model, self.glass_config):
            for ctx, members in order:
                scores = self._score_group(list(ctx), [pairs[i][1] for i in members])
                for i, answer in zip(members, scores):
                    results[i] = answer
                    key = requests[i][0]
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, answer)
                bar.update(len(members))
        bar.close()
        return results  # type: ignore[return-value]

    def _truncate(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Fit context + continuation into ``max_length``, cutting from the left; the
        context keeps at least one token (it chooses the neurons)."""
        if not context:
            raise ValueError("empty context: the harness should have put the prefix token there")
        if not continuation:
            raise ValueError("empty continuation: nothing to score")
        limit = self.max_length
        continuation = continuation[-(limit - 1):]
        context = context[-(limit - len(continuation)):]
        return context, continuation

    def _score_group(self, context: list[int], continuations: list[list[int]]) -> list[tuple[float, bool]]:
        """(sum of log-probs, greedy match) of each continuation after one ``context``; the caller has
        GLASS applied (``_loglikelihood_tokens``), and the context's prefill selects the neurons."""
        from transformers import DynamicCache

        device = self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        n, P, C = len(continuations), len(context), max(len(x) for x in continuations)
        ctx = torch.tensor([context], dtype=torch.long, device=device)
        cont = torch.full((n, C), pad, dtype=torch.long)
        for r, x in enumerate(continuations):
            cont[r, :len(x)] = torch.tensor(x)  # right padding: never seen by real tokens (causal)
        cont = cont.to(device)
        cache = DynamicCache(config=self.model.config)
        first = self.model(input_ids=ctx, attention_mask=torch.ones_like(ctx), cache=cache, use_cache=True,
                           logits_to_keep=1).logits  # (1, 1, V): predicts every continuation's first token
        logits = first.expand(n, 1, first.shape[-1])
        if C > 1:
            cache.batch_repeat_interleave(n)
            positions = torch.arange(P, P + C - 1, device=device).expand(n, -1)
            mask = torch.ones(n, P + C - 1, dtype=torch.long, device=device)
            rest = self.model(input_ids=cont[:, :-1], attention_mask=mask, position_ids=positions, cache=cache,
                              use_cache=True).logits
            logits = torch.cat([logits, rest], dim=1)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        out = []
        for r, x in enumerate(continuations):
            target = cont[r, :len(x)]
            lp = logprobs[r, :len(x)]
            picked = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            out.append((float(picked.sum()), bool((lp.argmax(-1) == target).all())))
        return out

    # generation ----------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The ``hf`` backend's generation, every batch with GLASS applied (sparse decode): one handle
        for all of them, each batch's prompt selecting anew."""
        with apply_glass(self.model, self.glass_config):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info.update(glass_device=str(next(self.model.parameters()).device),
                    glass_method=self.method, glass_density=self.glass_config.density, glass_lam=self.lam,
                    glass_prior=None if self.glass_config.prior is None else "loaded")
        return info


def task_manager(**kwargs: Any):
    """A harness ``TaskManager`` that also knows the offline tasks."""
    from lm_eval.tasks import TaskManager

    include = kwargs.pop("include_path", None)
    paths = [str(TASKS_DIR)] + ([] if include is None else [include] if isinstance(include, str) else list(include))
    return TaskManager(include_path=paths, **kwargs)


def simple_evaluate(**kwargs: Any) -> dict:
    """``lm_eval.simple_evaluate`` with the ``glass`` model registered and the offline
    tasks available (unless a ``task_manager`` is given)."""
    import lm_eval

    if kwargs.get("task_manager") is None:
        kwargs["task_manager"] = task_manager()
    return lm_eval.simple_evaluate(**kwargs)


HARNESS_COMMANDS = ("run", "ls", "validate")  # the sub-commands of the harness's command line


def harness_argv(argv: list[str]) -> list[str]:
    """Arguments for the harness's command line: ``argv`` (``run`` when it names no
    sub-command) plus the offline task folder as ``--include_path`` (the harness accepts
    only one such folder), so ``ls`` and ``validate`` see the offline tasks too."""
    argv = list(argv)
    command = argv.pop(0) if argv and argv[0] in HARNESS_COMMANDS else "run"
    if any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        raise ValueError(
            "glass lm-eval passes its offline task folder as --include_path itself and the harness takes only "
            "one; to add task folders, call glass_llm.lmeval.simple_evaluate(..., "
            "task_manager=glass_llm.lmeval.task_manager(include_path=[...]))"
        )
    if any(a in ("-h", "--help") for a in argv):
        return [command, *argv]
    return [command, *argv, "--include_path", str(TASKS_DIR)]


def main(argv: list[str] | None = None) -> int:
    """Run the harness's command line (``lm_eval run|ls|validate ...``) with this plugin
    loaded and the offline tasks on the include path."""
    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv[1:] if argv is None else argv
    saved = sys.argv
    sys.argv = ["lm_eval", *harness_argv(argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
