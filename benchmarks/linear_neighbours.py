"""Could ``glass-linear`` predict each left-out neuron from a few kept neighbours instead of all of them?

    python benchmarks/linear_neighbours.py [MODEL] [QS] [EVERY]
    # default: gemma3-270m 16,32,64 3

``glass-linear``'s selection costs one Cholesky factorisation of the kept neurons' covariance and one
solve with ``d_out`` right-hand sides per block (``lincomp.corrected_weight``): about 7 dense decode
steps on Gemma-3-270m on 2 CPU cores, against a budget of 2. A cheaper prediction: each left-out
neuron ``j`` from only the ``q`` kept neurons most correlated with it (``|corr|`` from the prior's
covariance), by its own ``q x q`` ridge regression; the output correction ``W_left A`` then has ``q``
non-zeros per left-out neuron, a sparse product. This screens the idea without running the model,
on every ``EVERY``-th block, for the set of the block's top half by ``E[z^2] ||W_out[:, j]||^2``:

* the share of the left-out neurons' output error variance that the prediction removes
  (``linear_layers.removed_share``'s measure), all kept neurons against ``q`` neighbours, at the
  default ridge (0.5 of the kept neurons' mean variance) and at 0.05;
* the time per block of each, median of 5 on this machine (both in float32, the covariance already
  in memory; the full solve as ``corrected_weight`` does it, with ``W_out S`` computed beforehand; the
  sparse one from each neuron's 256 most correlated neurons, ordered once per block).

Output: one line per block, then the mean over the blocks screened.
"""
import statistics
import sys
import time

import torch

from glass_llm import load_model
from glass_llm.adapters import find_ffn_blocks
from glass_llm.compensation import dense_weight
from glass_llm.lincomp import DEFAULT_RIDGE, corrected_weight, output_covariance
from glass_llm.prior import load_prior
from glass_llm.prior_cache import find_cached_prior
from linear_layers import removed, ridge_predictor, top_half

RIDGES = (DEFAULT_RIDGE, 0.05)


def neighbour_order(cov: torch.Tensor, width: int = 256) -> torch.Tensor:
    """(d, width): each neuron's ``width`` most correlated other neurons, most correlated first; computed
    once per block, before any selection."""
    std = cov.diagonal().clamp_min(1e-30).sqrt()
    corr = (cov / std[:, None] / std[None, :]).abs().fill_diagonal_(0)
    return corr.topk(width, dim=1).indices


def neighbours(order: torch.Tensor, k: torch.Tensor, u: torch.Tensor, q: int) -> torch.Tensor:
    """(u, q) neuron indices: each left-out neuron's ``q`` most correlated kept neurons, the first
    ``q`` kept ones of its ``order`` row."""
    kept = torch.zeros(order.shape[0], dtype=torch.bool)
    kept[k] = True
    rows = order[u]
    take = kept[rows] & (kept[rows].cumsum(1) <= q)
    if not bool((take.sum(1) == q).all()):
        raise SystemExit(f"fewer than {q} kept neurons among a neuron's {order.shape[1]} nearest: widen the order")
    return rows[take].view(len(u), q)


def sparse_predictor(cov: torch.Tensor, k: torch.Tensor, u: torch.Tensor, nb: torch.Tensor, ridge: float) -> torch.Tensor:
    """(u, q) ridge coefficients of each left-out neuron on its neighbours ``nb`` (neuron indices)."""
    rho = ridge * cov.diagonal()[k].mean()
    q = nb.shape[1]
    s_nn = cov[nb.unsqueeze(-1), nb.unsqueeze(-2)] + rho * torch.eye(q, dtype=cov.dtype)
    return torch.linalg.solve(s_nn, cov[u.unsqueeze(1), nb].unsqueeze(-1)).squeeze(-1)


def positions(nb: torch.Tensor, k: torch.Tensor, d: int) -> torch.Tensor:
    """``nb``'s neuron indices as positions into the kept neurons ``k`` of a block of ``d``."""
    pos = torch.full((d,), -1, dtype=torch.long)
    pos[k] = torch.arange(len(k))
    return pos[nb]


def dense_of(coef: torch.Tensor, nb: torch.Tensor, k: torch.Tensor, d: int) -> torch.Tensor:
    """The (u, k) coefficient matrix with the columns in the order of ``k``."""
    return torch.zeros(coef.shape[0], len(k), dtype=coef.dtype).scatter_(1, positions(nb, k, d), coef)


def sparse_weight(w: torch.Tensor, cov: torch.Tensor, order: torch.Tensor, k: torch.Tensor, u: torch.Tensor,
                  q: int, ridge: float) -> torch.Tensor:
    """The kept columns ``W_k + W_u A`` (d_out, k), ``A`` with ``q`` neighbours per left-out neuron
    (a sparse (k, u) product in compressed-row form)."""
    nb = neighbours(order, k, u, q)
    coef = sparse_predictor(cov, k, u, nb, ridge)
    cols = torch.arange(len(u)).repeat_interleave(q)
    a_t = torch.sparse_coo_tensor(torch.stack([positions(nb, k, cov.shape[0]).reshape(-1), cols]), coef.reshape(-1),
                                  (len(k), len(u))).to_sparse_csr()
    return w[:, k] + (a_t @ w[:, u].T).T


def median_ms(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    args = sys.argv[1:]
    model_name = args[0] if args else "gemma3-270m"
    qs = [int(x) for x in (args[1] if len(args) > 1 else "16,32,64").split(",")]
    every = int(args[2]) if len(args) > 2 else 3
    torch.set_num_threads(2)
    model, _ = load_model(model_name)
    path = find_cached_prior(model_name)
    if path is None:
        raise SystemExit(f"no cached default prior: run `glass prior {model_name}` first")
    cal = load_prior(path).calibration
    if cal is None or cal.lin_cov is None:
        raise SystemExit(f"the cached prior of {model_name} holds no activation covariance: rebuild it")
    blocks = find_ffn_blocks(model)
    print(f"{model_name}: share of the left-out output error removed (ridge {RIDGES[0]} / {RIDGES[1]}), "
          "and ms per block (median of 5, float32, 2 threads)")
    sums: dict[str, list[float]] = {}
    for i in range(0, len(blocks), every):
        w32 = dense_weight(blocks[i].output_module).float()
        cov32, mean32 = cal.lin_cov[i].float(), cal.lin_mean[i].float()
        w, cov, mean = w32.double(), cov32.double(), mean32.double()
        k, u = top_half(w, cov, mean)
        p = output_covariance(w32, cov32)
        cells = {"all kept": [removed(w, cov, k, u, ridge_predictor(cov, k, u, r)) for r in RIDGES]
                 + [median_ms(lambda: corrected_weight(w32, cov32, mean32, k[None], p=p))]}
        order = neighbour_order(cov32)
        for q in qs:
            nb = neighbours(order, k, u, q)
            cells[f"q = {q}"] = ([removed(w, cov, k, u, dense_of(sparse_predictor(cov, k, u, nb, r), nb, k, cov.shape[0]))
                                  for r in RIDGES]
                                 + [median_ms(lambda: sparse_weight(w32, cov32, order, k, u, q, DEFAULT_RIDGE))])
        print(f"  block {i:2d}: " + " | ".join(f"{name} {a:.3f} / {b:.3f}, {ms:.1f} ms"
                                              for name, (a, b, ms) in cells.items()), flush=True)
        for name, vals in cells.items():
            sums.setdefault(name, []).append(vals)
    print("  mean:     " + " | ".join(f"{name} {statistics.mean(v[0] for v in vals):.3f} / "
                                     f"{statistics.mean(v[1] for v in vals):.3f}, "
                                     f"{statistics.mean(v[2] for v in vals):.1f} ms" for name, vals in sums.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
