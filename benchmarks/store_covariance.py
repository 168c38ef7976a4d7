"""Put the activation covariance of greedy replies (what ``glass-linear`` reads) into a model's cached
default prior, leaving the rest of it, and so its build fingerprint, as it is:

    python benchmarks/store_covariance.py MODEL

A prior built or recalibrated now has it already (`glass prior MODEL [--recalibrate]`); this is for a
cached prior of format 9, whose runs on record should stay comparable with the new method's.
"""
import sys
import time

import torch

from glass_llm import load_model
from glass_llm.calibration import with_covariance
from glass_llm.prior import load_prior, save_prior
from glass_llm.prior_cache import find_cached_prior


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    path = find_cached_prior(name)
    if path is None:
        raise SystemExit(f"no cached default prior: run `glass prior {name}` first")
    torch.set_num_threads(2)
    model, tok = load_model(name)
    prior = load_prior(path)
    before = prior.fingerprint
    t0 = time.time()
    prior = with_covariance(model, tok, prior)
    save_prior(prior, path)
    again = load_prior(path)
    print(f"{path}: format {again.meta['format_version']}, {again.calibration.meta['lin_tokens']} tokens, "
          f"build {before} -> {again.fingerprint} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
