"""With compensation, should a neuron be ranked by its spread around the mean that is added back?

    python benchmarks/centered_oracle.py [MODEL] [P] [PROMPTS]     # default: gemma3-270m 8 23

Compensation replaces a neuron left out by its mean activation ``m`` (of greedy text), so what the
block loses is ``(z - m) * W_down[:, j]``, not ``z * W_down[:, j]``: the neurons worth keeping are
those whose activation moves most around ``m``. Tested at the oracle's level (the set chosen from
the dense reply itself, Wikipedia's calibration split, G = 64, density 0.5): the oracle ranked by
``sum_t u_t^2`` (the statistic of every method, ``u = z / ||z||`` per token), with and without
compensation, against the oracle ranked by ``sum_t ((z_t - m) / ||z_t||)^2`` (``cent``), by
``sum_t (z_t - m)^2`` (``cent-raw``), and each weighted by the output projection's squared column
norms (``-w``), all compensated; ``glass`` for scale. Ratios to the compensated plain oracle
(geometric mean of the per-prompt KL ratio, 95% t interval). Its output is committed under
benchmarks/results/.
"""
import sys, time
from dataclasses import replace
import torch
from calib_case import load_calib_case
from glass_llm.adapters import find_ffn_blocks, down_column_norms
from glass_llm.engine import GlassConfig
from glass_llm.intervals import t_quantile
from glass_llm.methods import METHODS, register_method
from glass_llm.metrics import kl_per_token
from glass_llm.prior import prior_from_sums
from glass_llm.teacher import continuation_logits

torch.set_num_threads(2)
model_name = sys.argv[1] if len(sys.argv) > 1 else "gemma3-270m"
P = int(sys.argv[2]) if len(sys.argv) > 2 else 8
n = int(sys.argv[3]) if len(sys.argv) > 3 else 23
register_method(replace(METHODS["global"], name="global-comp", compensate=True))
case = load_calib_case(model_name, "wikipedia", P, 64, n)
model, prior = case.model, case.prior
blocks = find_ffn_blocks(model)
m = prior.calibration.greedy_mean  # (L, d)
wn = torch.stack([down_column_norms(b).float() for b in blocks])  # (L, d)
store = {}
def hook(i):
    def h(mod, args):
        store[i] = args[0].detach().float()
    return h
hs = [b.output_module.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]
ids = torch.cat([case.prompts, case.refs[:, :-1]], 1)
Z = []
with torch.no_grad():
    for r in range(len(ids)):
        model(input_ids=ids[r:r+1], logits_to_keep=1)
        Z.append(torch.stack([store[i][0, P:] for i in range(len(blocks))]))  # (L, T, d)
for h in hs: h.remove()
def stat(z, kind):
    norm = z.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    if kind == "u2": return ((z / norm) ** 2).sum(1)
    if kind == "cent": return (((z - m[:, None]) / norm) ** 2).sum(1)
    if kind == "cent-raw": return ((z - m[:, None]) ** 2).sum(1)
    if kind == "cent-w": return (((z - m[:, None]) / norm) ** 2).sum(1) * wn ** 2
    if kind == "u2-w": return ((z / norm) ** 2).sum(1) * wn ** 2
settings = [("global", "u2"), ("global-comp", "u2"), ("global-comp", "cent"), ("global-comp", "cent-raw"), ("global-comp", "cent-w"), ("global-comp", "u2-w"), ("glass", None)]
kl = {s: [] for s in settings}
for r in range(len(ids)):
    for s in settings:
        meth, kind = s
        if kind is None:
            pr = prior
        else:
            st = stat(Z[r], kind)
            po = prior_from_sums(model, list(st), Z[r].shape[1], {"kind": "oracle"}, blocks)
            pr = replace(po, calibration=prior.calibration)
        logits, _ = continuation_logits(model, case.prompts[r:r+1], case.refs[r:r+1], GlassConfig(method=meth, density=0.5), pr)
        kl[s].append(float(kl_per_token(case.dense[r:r+1, 1:], logits[:, 1:]).mean()))
base = torch.tensor(kl[settings[1]])
print(f"{model_name} P={P} {len(base)} prompts, ratios to the oracle with compensation")
for s in settings:
    v = torch.tensor(kl[s]); d = (v / base).log(); h = t_quantile(0.975, len(d) - 1) * d.std() / len(d) ** 0.5
    print(f"  {s[0]:>12} {str(s[1]):>9}  KL {v.mean():.4f}  ratio {d.mean().exp():.3f} [{(d.mean()-h).exp():.3f}, {(d.mean()+h).exp():.3f}]", flush=True)
