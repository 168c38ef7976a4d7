"""What does ``linear_blocks`` buy? ``glass-linear`` predicting in only the n blocks of largest loss on
greedy replies (``GlassConfig(linear_blocks=n)``), scored by ``glass eval`` beside ``glass`` and
``glass-linear`` on every block.

    python benchmarks/linear_blocks.py COUNTS -- GLASS EVAL ARGUMENTS
    # e.g. python benchmarks/linear_blocks.py 3,6,9 -- gemma3-270m --corpus lambada --split calib \
    #          --methods dense,glass,glass-linear,glass-linear-3,glass-linear-6,glass-linear-9 ...

``glass eval`` scores registered methods by name; this script registers ``glass-linear-N`` (``glass-linear``
with ``linear_blocks=N``) for each count first, then runs it with the arguments after ``--``. Its
selection cost is measured apart, with ``glass bench --method glass-linear --linear-blocks N``.
"""
import sys
from dataclasses import replace

from glass_llm.cli import main as glass
from glass_llm.methods import METHODS, register_method


def main() -> int:
    args = sys.argv[1:]
    if "--" not in args or args.index("--") != 1:
        raise SystemExit(__doc__)
    for n in (int(x) for x in args[0].split(",")):
        register_method(replace(METHODS["glass-linear"], name=f"glass-linear-{n}", linear_blocks=n,
                                description=f"glass-linear predicting in the {n} blocks of largest loss on greedy "
                                            "replies, the mean elsewhere"))
    return glass(["eval", *args[2:]])


if __name__ == "__main__":
    raise SystemExit(main())
