"""glass lm-eval [run|ls|validate] [HARNESS OPTIONS]: the lm-evaluation-harness command line
with the ``glass`` model registered and the offline tasks on the include path.

Every option goes to the harness unchanged; without a sub-command it is ``run``, where
``--model`` defaults to ``glass``. Examples:

    glass lm-eval ls tasks
    glass lm-eval validate --tasks glass_offline

    glass lm-eval --model_args pretrained=smollm2-135m,method=glass,density=0.5 \\
        --tasks glass_offline --limit 100 --batch_size 8 --output_path results/

Model arguments: pretrained, method, density, lam, statistic, prior (file),
prior_tokens, prior_source, path, share_batch, dtype, device, batch_size.
Offline tasks: hellaswag_offline, piqa_offline, copa_offline, boolq_offline,
arc_easy_offline, arc_challenge_offline, winogrande_offline (tag: glass_offline).
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    # prefix_chars="+": every "--option" is left for the harness's own parser.
    p = sub.add_parser("lm-eval", aliases=["lm_eval"], help="run lm-evaluation-harness tasks on a GLASS model",
                       description=__doc__, prefix_chars="+", add_help=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("harness_args", nargs=argparse.REMAINDER,
                   help="a harness sub-command (run, ls, validate; default run) and its options")
    p.set_defaults(func=run)


def harness_options(args: list[str]) -> list[str]:
    """The harness arguments; for ``run`` (named or implied) ``--model glass`` is added
    when no model is named."""
    from ..lmeval import HARNESS_COMMANDS

    if args and args[0] in HARNESS_COMMANDS and args[0] != "run":
        return list(args)
    if args and args[0] == "run":
        args = args[1:]
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        args = ["--model", "glass", *args]
    if not any(a == "--device" or a.startswith("--device=") for a in args):
        # the harness would record its own default (cuda:0) even for a run on the CPU
        from ..models import resolve_device

        args = [*args, "--device", str(resolve_device("auto"))]
    return args


def run(args) -> int:
    try:
        from .. import lmeval
    except ImportError as err:
        raise RuntimeError(str(err)) from None

    given = list(args.harness_args)
    if not given or given[0] in ("-h", "--help") or given == ["run"]:
        print(__doc__)
        print("Harness options (`lm_eval run`):\n")
        return lmeval.main(["run", "--help"])
    return lmeval.main(harness_options(given))
