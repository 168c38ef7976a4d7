"""Where does linear compensation pay? ``glass-linear`` on a few blocks only, ranked by a cheap proxy.

    python benchmarks/linear_layers.py [MODEL] [P] [PROMPTS] [COUNTS]
    # default: gemma3-270m 8 23 1,2,4,8

Its selection cost is one Cholesky factorisation and one solve per block, so predicting the left-out
neurons in ``n`` of ``L`` blocks costs about ``n / L`` of it. The proxy ranks the blocks without
running the model: a block's KL when it alone runs at density 0.5 on the model's greedy replies (the
prior's ``reply_loss``) times the share of its output error that the prediction removes,
``1 - tr(W_u R W_u^T) / tr(W_u S_uu W_u^T)`` (``R`` the residual covariance of the ridge predictor,
``u`` the neurons a set of the block's top half by ``E[z^2] ||W_out[:, j]||^2`` leaves out). Then the
prompts of Wikipedia's calibration split (G = 64, the dense model's greedy continuation) are
teacher-forced at density 0.5: ``glass``, ``glass-linear`` on every block, and on the ``n`` blocks
the proxy ranks first (the others' covariances cut to their diagonal, which makes the prediction
their mean, as ``glass``). Printed: the ranking, and per setting the geometric mean of the
per-prompt KL ratio to ``glass`` with its 95% t interval and the share of the full gain it keeps.
"""
import sys
import time
from dataclasses import replace

import torch

from calib_case import load_calib_case
from glass_llm.adapters import find_ffn_blocks
from glass_llm.compensation import dense_weight
from glass_llm.covariance import with_covariance
from glass_llm.engine import GlassConfig
from glass_llm.intervals import mean_ci
from glass_llm.lincomp import DEFAULT_RIDGE
from prompt_recency import per_prompt_kl


def top_half(w: torch.Tensor, cov: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, left out): the block's top half of neurons by ``E[z^2] ||w_j||^2`` and the rest, each sorted."""
    order = ((cov.diagonal() + mean ** 2) * w.pow(2).sum(0)).argsort(descending=True)
    half = cov.shape[0] // 2
    return order[:half].sort().values, order[half:].sort().values


def ridge_predictor(cov: torch.Tensor, k: torch.Tensor, u: torch.Tensor, ridge: float) -> torch.Tensor:
    """(u, k): the ridge prediction of the neurons ``u`` from all the neurons ``k``."""
    s_kk = cov[k][:, k]
    rho = ridge * s_kk.diagonal().mean()
    return torch.linalg.solve(s_kk + rho * torch.eye(len(k), dtype=cov.dtype), cov[k][:, u]).T


def removed(w: torch.Tensor, cov: torch.Tensor, k: torch.Tensor, u: torch.Tensor, a: torch.Tensor) -> float:
    """Share of ``W_u z_u``'s error variance removed by predicting ``z_u - m_u`` as ``a (z_k - m_k)``."""
    s_uu, s_uk, s_kk = cov[u][:, u], cov[u][:, k], cov[k][:, k]
    resid = s_uu - a @ s_uk.T - s_uk @ a.T + a @ s_kk @ a.T
    wu = w[:, u]
    return float(1 - torch.trace(wu @ resid @ wu.T) / torch.trace(wu @ s_uu @ wu.T))


def removed_share(w: torch.Tensor, cov: torch.Tensor, mean: torch.Tensor, ridge: float) -> float:
    """Share of the left-out neurons' output error variance that the ridge prediction removes, for
    the set of the block's top half by ``E[z^2] ||w_j||^2``."""
    w, cov, mean = w.double(), cov.double(), mean.double()
    k, u = top_half(w, cov, mean)
    return removed(w, cov, k, u, ridge_predictor(cov, k, u, ridge))


def main() -> int:
    args = sys.argv[1:]
    model_name = args[0] if args else "gemma3-270m"
    P = int(args[1]) if len(args) > 1 else 8
    n = int(args[2]) if len(args) > 2 else 23
    counts = [int(x) for x in (args[3] if len(args) > 3 else "1,2,4,8").split(",")]
    torch.set_num_threads(2)
    t0 = time.time()
    case = load_calib_case(model_name, "wikipedia", P, 64, n)
    if case.prior.calibration.lin_cov is None:
        from glass_llm import load_model

        case.prior = with_covariance(case.model, load_model(model_name)[1], case.prior)
    cal = case.prior.calibration
    blocks = find_ffn_blocks(case.model)
    share = torch.tensor([removed_share(dense_weight(b.output_module), cal.lin_cov[i], cal.lin_mean[i], DEFAULT_RIDGE)
                          for i, b in enumerate(blocks)])
    proxy = cal.reply_loss.float() * share
    ranking = proxy.argsort(descending=True).tolist()
    print(f"{model_name} P={P} {n} prompts, G=64, density 0.5; blocks by proxy (block: reply KL x share removed):")
    print("  " + ", ".join(f"{i}: {float(cal.reply_loss[i]):.4f} x {float(share[i]):.2f}" for i in ranking), flush=True)
    diagonal = torch.diag_embed(cal.lin_cov.diagonal(dim1=1, dim2=2))

    def only(chosen: list[int]):
        cov = diagonal.clone()
        cov[chosen] = cal.lin_cov[chosen]
        return replace(case.prior, calibration=replace(cal, lin_cov=cov))

    config = GlassConfig(method="glass-linear", density=0.5)
    base = per_prompt_kl(case, GlassConfig(method="glass", density=0.5))
    full = per_prompt_kl(case, config)
    rows = [(f"all {len(blocks)} blocks", full)]
    rows += [(f"first {c} by proxy", per_prompt_kl(replace(case, prior=only(ranking[:c])), config)) for c in counts]
    full_gain = float((full / base).log().mean())
    print(f"  glass KL {base.mean():.4f} ({time.time() - t0:.0f} s)")
    for label, kl in rows:
        ci = mean_ci((kl / base).log().tolist()).exp()
        kept = float((kl / base).log().mean()) / full_gain
        print(f"  glass-linear on {label:>20}  KL {kl.mean():.4f}  ratio {ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"
              f"  share of the gain {kept:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
