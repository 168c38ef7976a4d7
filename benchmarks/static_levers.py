"""Three more levers for the static ``glass`` where it takes the nearest greedy replies, on the calibration split.

    python benchmarks/static_levers.py [MODEL] [P,P] [PROMPTS]     # default: gemma3-270m 8,32 23

For each prompt of Wikipedia's calibration split (never the reported test split; G = 64, the
dense model's greedy continuation), teacher-forced at density 0.5 with the cached default prior,
against ``glass`` at lam 0.5 on the same prompts (geometric mean of the per-prompt KL ratio, 95% t
interval): ``glass`` at other lams; ``glass`` with K = 16, 32 or 128 nearest replies instead of 64;
``glass-one-prior`` and ``glass-a`` for scale; and ``glass`` whose compensation adds back, instead of the
mean activation of all greedy text, the mean over the ``comp-K`` bank replies nearest to the prompt
(a bank of 256 greedy replies written as the prior's, with their signed activation sums; cached
under runs/). Prints the table; its output is committed under benchmarks/results/.
"""
import sys, time
from dataclasses import replace
from pathlib import Path
import torch
from calib_case import load_calib_case
from glass_llm.adapters import find_ffn_blocks
from glass_llm.calibrate import ActivationRecorder
from glass_llm.engine import GlassConfig
from glass_llm.greedy_text import GREEDY_OFFSET
from glass_llm.intervals import t_quantile
from glass_llm.methods import METHODS, register_method
from glass_llm.metrics import kl_per_token
from glass_llm.neighbours import nearest, unit_statistic
from glass_llm.self_sample import sample_and_record, self_prompts
from glass_llm.teacher import continuation_logits
from glass_llm import load_model

torch.set_num_threads(2)
model_name = sys.argv[1] if len(sys.argv) > 1 else "gemma3-270m"
ps = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "8,32").split(",")]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 23


@torch.no_grad()
def signed_bank(model, tok, rows=256, prefix=8, length=128):
    path = Path(f"runs/signed-bank-{model_name}.pt")
    if path.exists():
        return torch.load(path)
    blocks = find_ffn_blocks(model)
    idx = list(range(GREEDY_OFFSET, GREEDY_OFFSET + rows))
    sums, counts, tokens = sample_and_record(model, tok, blocks, idx, prefix + length, 0, greedy_after=prefix)
    prompts = self_prompts(tok)
    out = []
    for r, i in enumerate(idx):
        if counts[r] == 0:
            continue
        seq = prompts[i % len(prompts)] + tokens[r, : prefix + int(counts[r])].tolist()
        start = len(prompts[i % len(prompts)]) + prefix
        ids = torch.tensor([seq]); where = torch.zeros_like(ids); where[0, start:] = 1
        rec = ActivationRecorder(model, blocks); rec.signed = True
        with rec:
            rec.run(model, ids, where, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1)
        out.append(torch.stack([s.cpu() for s in rec.sums]))
    keep = counts > 0
    d = {"sums": torch.stack(sums, 1)[keep], "tokens": counts[keep].float(), "signed": torch.stack(out)}
    torch.save(d, path)
    return d


for k in (16, 32, 128):
    register_method(replace(METHODS["glass"], name=f"glass-k{k}", neighbours=k))
settings = [("glass", 0.5, None)] + [("glass", l, None) for l in (0.3, 0.4, 0.6, 0.7)] + \
    [(f"glass-k{k}", 0.5, None) for k in (16, 32, 128)] + [("glass-one-prior", 0.5, None), ("glass-a", 0.5, None)] + \
    [("glass", 0.5, 64), ("glass", 0.5, 16), ("glass", 0.5, 256)]
_m, _tok = load_model(model_name)
SB = signed_bank(_m, _tok)
del _m
for P in ps:
    t0 = time.time()
    case = load_calib_case(model_name, "wikipedia", P, 64, n)
    prior = case.prior
    print("calib case", time.time() - t0, flush=True)
    kl = {s: [] for s in settings}
    blocks = find_ffn_blocks(case.model)
    rec = ActivationRecorder(case.model, blocks); rec.per_row = True
    with rec:
        rec.run(case.model, case.prompts, torch.ones_like(case.prompts), logits_to_keep=1)
    query = torch.stack([s.cpu() for s in rec.take_row_sums()], 1)
    qn = torch.full((len(query),), float(case.prompts.shape[1]))
    for i in range(len(case.prompts)):
        for s in settings:
            m, lam, kc = s
            pr = prior
            if kc is not None:
                sb = SB
                order = nearest(unit_statistic(query[i:i+1], qn[i:i+1]), unit_statistic(sb["sums"], sb["tokens"]), kc)[0]
                mean = sb["signed"][order].sum(0) / sb["tokens"][order].sum()
                pr = replace(prior, calibration=replace(prior.calibration, greedy_mean=mean))
            logits, _ = continuation_logits(case.model, case.prompts[i:i+1], case.refs[i:i+1], GlassConfig(method=m, density=0.5, lam=lam), pr)
            kl[s].append(float(kl_per_token(case.dense[i:i+1, 1:], logits[:, 1:]).mean()))
    base = torch.tensor(kl[settings[0]])
    print(f"{model_name} P={P} {len(base)} prompts ({time.time()-t0:.0f}s)", flush=True)
    for s in settings:
        v = torch.tensor(kl[s]); d = (v / base).log(); h = t_quantile(0.975, len(d) - 1) * d.std() / len(d) ** 0.5
        print(f"  {s[0]:>16} lam {s[1]:.1f} comp-K {s[2]}  KL {v.mean():.4f}  ratio {d.mean().exp():.3f} [{(d.mean()-h).exp():.3f}, {(d.mean()+h).exp():.3f}]", flush=True)
