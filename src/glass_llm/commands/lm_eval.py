"""glass lm-eval [HARNESS RUN OPTIONS]: the lm-evaluation-harness ``run`` command with the
``glass`` model registered and the offline tasks on the include path.

Every option goes to the harness unchanged (``--model`` defaults to ``glass``). Example:

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
    p.add_argument("harness_args", nargs=argparse.REMAINDER, help="options of `lm_eval run`")
    p.set_defaults(func=run)


def harness_options(args: list[str]) -> list[str]:
    """The harness options with ``--model glass`` added when no model is named."""
    if args and args[0] == "run":
        args = args[1:]
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        args = ["--model", "glass", *args]
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
