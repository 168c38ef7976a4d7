"""Linear compensation (``glass-linear``, ``lincomp``): the neurons a selection leaves out predicted
from those it keeps by least squares on the activation covariance of greedy replies. The math
alone, then on the real SmolLM2 model: every path computes the same block output, teacher forcing
equals step-by-step decoding, the prior file keeps the covariance, and bad input is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from glass_llm import GlassConfig, apply_glass
from glass_llm.adapters import find_ffn_blocks, weight_out_in
from glass_llm.lincomp import corrected_weight, output_covariance
from glass_llm.prior import load_prior, save_prior
from glass_llm.teacher import continuation_logits

from tiny import ARCHS, tiny_model, tiny_prior_with_mean

PROMPTS = ["The river Thames flows through London and",
           "Photosynthesis is the process by which green plants"]


def _case(d=12, d_out=5, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    x = x + torch.randn(d, generator=g, dtype=torch.float64)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / n
    w = torch.randn(d_out, d, generator=g, dtype=torch.float64)
    return x, mean, cov, w


def test_corrected_weight_is_the_least_squares_prediction_written_out():
    """W' and the shift equal W_kept + W_left A and W_left (m_left - A m_kept), A = S_lk (S_kk + rho I)^-1."""
    _, mean, cov, w = _case()
    kept = torch.tensor([[0, 2, 3, 7, 9, 11], [1, 4, 5, 6, 8, 10]])
    w_new, shift = corrected_weight(w, cov, mean, kept, ridge=0.3)
    assert w_new.shape == (2, 5, 6) and shift.shape == (2, 5)
    for s in range(2):
        k = kept[s]
        left = torch.tensor([j for j in range(12) if j not in k.tolist()])
        s_kk = cov[k][:, k]
        rho = 0.3 * s_kk.diagonal().mean()
        a = cov[left][:, k] @ torch.linalg.inv(s_kk + rho * torch.eye(6, dtype=cov.dtype))
        assert torch.allclose(w_new[s].double(), w[:, k] + w[:, left] @ a, atol=1e-4)
        assert torch.allclose(shift[s].double(), w[:, left] @ (mean[left] - a @ mean[k]), atol=1e-4)
    # one mean per set (a mean that follows the reply): each set centred on its own, the same W'
    means = torch.stack([mean, mean + torch.linspace(-1, 1, 12, dtype=mean.dtype)])
    w_two, shift_two = corrected_weight(w, cov, means, kept, ridge=0.3)
    assert torch.equal(w_two, w_new)
    for s in range(2):
        k, m = kept[s], means[s]
        assert torch.allclose(shift_two[s].double(), w @ m - w_new[s].double() @ m[k], atol=1e-4)
    assert not torch.allclose(shift_two[1], shift[1])
    with pytest.raises(ValueError, match="mean"):
        corrected_weight(w, cov, torch.stack([mean] * 3), kept)


def test_left_out_neurons_that_follow_the_kept_ones_are_recovered_exactly():
    """Where the left-out activations are linear in the kept ones, the prediction is exact (up to the
    ridge): the block's output from the kept neurons alone equals the full output."""
    g = torch.Generator().manual_seed(1)
    kept_z = torch.randn(300, 6, generator=g, dtype=torch.float64) + 2.0
    x = torch.cat([kept_z, kept_z @ torch.randn(6, 4, generator=g, dtype=torch.float64) + 0.5], 1)  # (300, 10)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / 300
    w = torch.randn(3, 10, generator=g, dtype=torch.float64)
    kept = torch.arange(6).unsqueeze(0)
    w_new, shift = corrected_weight(w, cov, mean, kept, ridge=1e-7)
    got = kept_z.float() @ w_new[0].T + shift[0]
    assert (got.double() - x @ w.T).abs().max() < 1e-3
    mean_only = kept_z @ w[:, :6].T + w[:, 6:] @ mean[6:]
    assert (mean_only - x @ w.T).abs().max() > 0.1  # where the mean alone is far off


def test_a_large_ridge_tends_to_mean_compensation_and_bad_ridges_are_refused():
    _, mean, cov, w = _case()
    kept = torch.tensor([[0, 1, 2, 3, 4, 5]])
    w_new, shift = corrected_weight(w, cov, mean, kept, ridge=1e6, p=output_covariance(w, cov))
    assert torch.allclose(w_new[0].double(), w[:, :6], atol=1e-4)
    assert torch.allclose(shift[0].double(), w[:, 6:] @ mean[6:], atol=1e-3)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ridge must be > 0"):
            corrected_weight(w, cov, mean, kept, ridge=bad)
    with pytest.raises(ValueError, match="covariance"):
        corrected_weight(w, cov[:-1], mean, kept)


@pytest.fixture(scope="module")
def smollm_linear(smollm, smollm_prior):
    """The test prior with the activation covariance of 6 greedy replies (the default uses 256)."""
    from glass_llm.covariance import with_covariance

    model, tok = smollm
    return with_covariance(model, tok, smollm_prior, rows=6)


@pytest.mark.parametrize("path,batch,kernel", [("sliced", 1, "union"), ("sliced", 2, "union"),
                                               ("sliced", 2, "bmm"), ("masked", 2, "union")])
def test_every_path_computes_the_predicted_output(smollm, smollm_linear, path, batch, kernel):
    """One set for the batch (folded into the compact weight), one set per row over the union or in
    3-D weights, and the masked reference: each row's block output is
    ``W (z * keep + (m + A (z_kept - m_kept)) * (1 - keep))``, with the sets of ``glass``."""
    model, tok = smollm
    blocks = find_ffn_blocks(model)
    enc = tok(PROMPTS[:batch], return_tensors="pt", padding=True)
    cal = smollm_linear.calibration
    with apply_glass(model, GlassConfig(method="glass", density=0.5, prior=smollm_linear)) as h:
        model.generate(**enc, max_new_tokens=2, do_sample=False)
        plain = h.selections
    config = GlassConfig(method="glass-linear", density=0.5, prior=smollm_linear, path=path)
    with apply_glass(model, config) as h:
        for st in h.states:
            st.batch_kernel = kernel
        model.generate(**enc, max_new_tokens=2, do_sample=False)
        assert all(torch.equal(a, b) for a, b in zip(plain, h.selections))  # the same sets as glass
        z = torch.randn(batch, 3, blocks[0].d_ff, generator=torch.Generator().manual_seed(0))
        sparse = [i for i, b in enumerate(blocks) if h.selections[i].shape[-1] < b.d_ff]
        for i in (sparse[0], sparse[-1]):
            sets = h.selections[i].expand(batch, -1)
            cov, mean = cal.lin_cov[blocks[i].index].double(), cal.lin_mean[blocks[i].index].double()
            w = weight_out_in(h._outputs[i].original).double()
            want = []
            for r in range(batch):
                k = sets[r]
                left = torch.tensor(sorted(set(range(blocks[i].d_ff)) - set(k.tolist())))
                s_kk = cov[k][:, k]
                a = cov[left][:, k] @ torch.linalg.inv(s_kk + 0.5 * s_kk.diagonal().mean() * torch.eye(len(k)).double())
                full = torch.zeros(3, blocks[i].d_ff, dtype=torch.float64)
                full[:, k] = z[r][:, k].double()
                full[:, left] = mean[left] + (z[r][:, k].double() - mean[k]) @ a.T
                want.append(F.linear(full, w))
            want = torch.stack(want)
            st = h.states[i]
            if path == "masked":
                got = h._outputs[i](z)
            elif st.row_mask is None and h.selections[i].shape[0] == batch > 1:  # "bmm": per-row compact order
                got = h._outputs[i](torch.stack([z[r][:, sets[r]] for r in range(batch)]))
            else:
                got = h._outputs[i](z[..., sets[0] if st.row_mask is None else torch.unique(sets)])
            assert (got.double() - want).abs().max() <= 2e-3 * want.abs().max()


@pytest.mark.parametrize("method,other", [("glass-linear", "glass"), ("glass-refresh-linear", "glass-refresh-neighbours")])
def test_linear_teacher_forcing_equals_stepwise_decoding(smollm, smollm_linear, method, other):
    """Static, and re-selecting every 3 tokens (the prediction solved again for each new set,
    centred on the mean that follows the reply): teacher forcing reproduces sliced decoding."""
    model, tok = smollm
    enc = tok.apply_chat_template([{"role": "user", "content": "What is a prime number?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    P = enc["input_ids"].shape[1]
    extra = {} if method == "glass-linear" else {"refresh": 3, "dense_start": 2}
    config = GlassConfig(method=method, density=0.5, prior=smollm_linear, **extra)
    with apply_glass(model, config) as h:
        out = model.generate(**enc, max_new_tokens=10, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert h.refreshes == (0 if method == "glass-linear" else 2)
    step = torch.stack(out.logits, 1)
    tf, _ = continuation_logits(model, enc["input_ids"], out.sequences[:, P:], replace(config, path="masked"))
    assert (tf - step).abs().max() <= 1e-4
    plain, _ = continuation_logits(model, enc["input_ids"], out.sequences[:, P:],
                                   replace(config, method=other))
    assert (plain - step).abs().max() > 1e-2  # the prediction really changes the output


def test_linear_blocks_predict_in_the_blocks_of_largest_loss_and_add_the_mean_elsewhere(smollm, smollm_linear):
    """With ``linear_blocks`` n the n blocks of largest loss on greedy replies compute glass-linear's output and
    the others glass's (the mean added back), on the same sets; n = every block is glass-linear itself; and
    teacher forcing still reproduces step-by-step decoding."""
    from glass_llm.method_inputs import linear_blocks

    model, tok = smollm
    blocks = find_ffn_blocks(model)
    cal = smollm_linear.calibration
    top = linear_blocks(cal, 3)
    assert len(top) == 3 and min(cal.reply_loss[list(top)]) >= max(
        cal.reply_loss[[i for i in range(len(blocks)) if i not in top]])
    assert linear_blocks(cal, 0) == linear_blocks(cal, 99) == set(range(len(blocks)))
    enc = tok(PROMPTS[:1], return_tensors="pt")
    z = torch.randn(1, 3, blocks[0].d_ff, generator=torch.Generator().manual_seed(1))
    outs, sets = {}, {}
    for name, extra in (("glass", {}), ("glass-linear", {}), ("some", {"linear_blocks": 3}),
                        ("all", {"linear_blocks": len(blocks)})):
        method = "glass" if name == "glass" else "glass-linear"
        with apply_glass(model, GlassConfig(method=method, density=0.5, prior=smollm_linear, **extra)) as h:
            model.generate(**enc, max_new_tokens=2, do_sample=False)
            sets[name] = h.selections
            outs[name] = [h._outputs[i](z[..., h.selections[i][0]]) for i in range(len(blocks))]
    assert all(all(torch.equal(a, b) for a, b in zip(sets["glass"], sets[n])) for n in sets)
    for i in range(len(blocks)):
        assert torch.equal(outs["all"][i], outs["glass-linear"][i])
        assert torch.equal(outs["some"][i], outs["glass-linear" if i in top else "glass"][i])
    assert sum(not torch.allclose(outs["glass"][i], outs["glass-linear"][i]) for i in top) == 3
    config = GlassConfig(method="glass-refresh-linear", density=0.5, prior=smollm_linear, refresh=3, dense_start=2,
                         linear_blocks=3)
    with apply_glass(model, config) as h:
        out = model.generate(**enc, max_new_tokens=10, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert h.refreshes == 2
    P = enc["input_ids"].shape[1]
    tf, _ = continuation_logits(model, enc["input_ids"], out.sequences[:, P:], replace(config, path="masked"))
    assert (tf - torch.stack(out.logits, 1)).abs().max() <= 1e-4


def test_prior_file_keeps_the_covariance_and_older_files_load(smollm_linear, tmp_path):
    cal = smollm_linear.calibration
    n_blocks, d_ff = cal.greedy_sums.shape
    assert cal.lin_cov.shape == (n_blocks, d_ff, d_ff) and cal.format_version == 10
    back = load_prior(save_prior(smollm_linear, tmp_path / "p.safetensors"))
    assert back.meta["format_version"] == 10
    # stored as float16 correlations and float32 deviations, and rounded so when measured
    assert torch.allclose(back.calibration.lin_cov, cal.lin_cov, rtol=1e-5, atol=1e-12)
    assert torch.equal(back.calibration.lin_mean, cal.lin_mean)
    assert "activation covariance of greedy replies" in "\n".join(back.calibration.summary())
    old = replace(smollm_linear, calibration=replace(cal, lin_cov=None, lin_mean=None))
    old9 = load_prior(save_prior(old, tmp_path / "old.safetensors"))
    assert old9.calibration.lin_cov is None and old9.meta["format_version"] < 10
    with pytest.raises(ValueError, match="together|mean"):
        replace(cal, lin_mean=None).check(n_blocks)
    with pytest.raises(ValueError, match="another model"):
        replace(cal, lin_cov=cal.lin_cov[:, :-1]).check(n_blocks)


def test_linear_compensation_refuses_bad_options():
    with pytest.raises(ValueError, match="predicts none"):
        GlassConfig(method="glass", density=0.5, ridge=0.5).resolved()
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="ridge must be"):
            GlassConfig(method="glass-linear", density=0.5, ridge=bad).resolved()
    with pytest.raises(ValueError, match="predicts none"):
        GlassConfig(method="glass", density=0.5, linear_blocks=4).resolved()
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="linear_blocks must be"):
            GlassConfig(method="glass-linear", density=0.5, linear_blocks=bad).resolved()


@pytest.mark.parametrize("kind", ARCHS)
def test_linear_compensation_on_every_layout_sliced_equals_masked(kind, monkeypatch):
    """Every supported FFN layout (fused gate/up, Conv1D, flattened activations, biased projections):
    the sliced path (folded, or over the union of the rows' sets) equals the masked reference, for one
    set per row and one set for the batch, and differs from mean compensation. The tiny model's
    covariance is made up: a structural test."""
    from glass_llm import methods

    monkeypatch.setitem(methods.METHODS, "glass-a-linear",
                        replace(methods.METHODS["glass-a-comp"], name="glass-a-linear", comp_linear=True))
    model = tiny_model(kind)
    prior = tiny_prior_with_mean(model)
    L, d_ff = prior.sums.shape
    g = torch.Generator().manual_seed(3)
    x = torch.randn(L, 4 * d_ff, d_ff, generator=g)
    cov = x.transpose(1, 2) @ x / (4 * d_ff)
    prior.calibration = replace(prior.calibration, lin_cov=cov, lin_mean=prior.calibration.greedy_mean)
    prompt = torch.randint(3, 96, (2, 7), generator=g)
    cont = torch.randint(3, 96, (2, 9), generator=g)
    for share in (False, True):
        cfg = dict(method="glass-a-linear", density=0.5, prior=prior, share_batch=share)
        sliced, sel_s = continuation_logits(model, prompt, cont, GlassConfig(**cfg))
        masked, _ = continuation_logits(model, prompt, cont, GlassConfig(**cfg, path="masked"))
        mean_comp, sel_m = continuation_logits(model, prompt, cont, GlassConfig(**{**cfg, "method": "glass-a-comp"}))
        assert (sliced - masked).abs().max() <= 1e-4
        assert all(torch.equal(a, b) for a, b in zip(sel_s, sel_m))
        assert (sliced[:, 1:] - mean_comp[:, 1:]).abs().max() > 1e-4
        assert torch.equal(sliced[:, 0], mean_comp[:, 0])  # the prefill is dense
