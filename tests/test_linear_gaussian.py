"""Objectives against a hierarchy whose log p(x) is known exactly.

A two-level linear-Gaussian chain built from the library's own parts (depth-0 cells, identity
activations, constant scales): z_2 ~ N(0, 1), z_1 | z_2 ~ N(a z_2 + b, s_1^2), x | z_1 ~ N(w z_1 + c, diag(s_x^2)).
Its marginal is Gaussian, and with one-dimensional latents the Ladder VAE's merge represents the exact
posterior, so every bound can be checked against log p(x).
"""

import math

import pytest
import torch

import hvae
from hvae.distributions import raw_from_scale

D = 3
MIN_SCALE = 1e-4


def _linear_model(inference="ladder", seed=0, scale_param="std"):
    cfg = hvae.ModelConfig(
        data_shape=[D],
        latent_dims=[1, 1],
        hidden_dims=[1, 1],
        depth=0,
        batch_norm=False,
        activation="identity",
        inference=inference,
        likelihood="gaussian",
        min_scale=MIN_SCALE,
        scale_param=scale_param,
    )
    torch.manual_seed(seed)
    model = hvae.build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    params = dict(
        a=torch.tensor(1.3),
        b=torch.tensor(-0.4),
        s1=torch.tensor(0.6),
        w=torch.randn(D, generator=g),
        c=torch.randn(D, generator=g),
        sx=0.3 + torch.rand(D, generator=g),
    )
    with torch.no_grad():
        prior = model.layers[0].prior_head  # Linear(1 -> 2): [mu_p ; raw sigma_p]
        prior.weight.copy_(torch.tensor([[params["a"]], [0.0]]))
        prior.bias.copy_(torch.stack([params["b"], raw_from_scale(params["s1"], MIN_SCALE, scale_param)]))
        dec = model.decoder_head  # Linear(1 -> D)
        dec.weight.copy_(params["w"].view(D, 1))
        dec.bias.copy_(params["c"])
        model.likelihood.raw_scale.copy_(raw_from_scale(params["sx"], MIN_SCALE).view(1, D))
    return model, params


def _exact(params):
    """Marginal N(m, S) of x, and the exact ladder terms: per level (weight, bias, sigma) of mu_hat / q_top."""
    a, b, s1, w, c, sx = (params[k] for k in ("a", "b", "s1", "w", "c", "sx"))
    Dx = torch.diag(sx**2)
    m = w * b + c
    S = torch.outer(w, w) * (a**2 + s1**2) + Dx
    # level 1: p(x | z_1) as a function of z_1
    prec1 = w @ torch.linalg.solve(Dx, w)
    g1 = torch.linalg.solve(Dx, w)
    lvl1 = (g1 / prec1, -(g1 @ c) / prec1, 1 / prec1.sqrt())
    # level 2 (top): exact posterior p(z_2 | x) from x | z_2 ~ N(A z_2 + c2, S2)
    A, c2 = w * a, w * b + c
    S2 = torch.outer(w, w) * s1**2 + Dx
    g2 = torch.linalg.solve(S2, A)
    prec2 = A @ g2 + 1.0
    lvl2 = (g2 / prec2, -(g2 @ c2) / prec2, 1 / prec2.sqrt())
    return m, S, (lvl1, lvl2)


def _set_posterior(model, levels, sigma_factor=1.0, shift=0.0):
    param = model.config.scale_param
    with torch.no_grad():
        for layer, (wt, bias, sigma) in zip(model.layers, levels):
            head = layer.posterior_head
            head.weight.zero_()
            head.weight[0].copy_(wt)
            head.bias.copy_(torch.stack([bias + shift, raw_from_scale(sigma * sigma_factor, MIN_SCALE, param)]))


def _log_px(x, m, S):
    return torch.distributions.MultivariateNormal(m, S).log_prob(x)


def _data(n=4, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _room_for(model, samples: int, monkeypatch) -> None:
    """Automatic IW chunks of ``samples`` samples per input of ``_data()``, the widest tensor per input
    measured again at the next bound."""
    import hvae.iw as model_module

    model.log_likelihood(_data(), num_samples=1)  # measures the widest tensor per input
    width = model_module._widths[model].pop((D,))
    monkeypatch.setitem(model_module.IW_CHUNK_ELEMENTS, "cpu", samples * len(_data()) * width)


@pytest.mark.parametrize("scale_param", ["std", "variance"])
def test_elbo_equals_log_px_with_exact_posterior(scale_param, monkeypatch):
    model, params = _linear_model(scale_param=scale_param)
    m, S, levels = _exact(params)
    _set_posterior(model, levels)
    x = _data()
    exact = _log_px(x, m, S)
    # with q = p(z | x) every importance weight equals p(x): a single sample is exact
    torch.manual_seed(0)
    assert torch.allclose(model.log_likelihood(x, num_samples=1), exact, atol=2e-4)
    # and so does any number of them in any chunks: the automatic ones (one sample, then even chunks
    # within the per-tensor budget) and explicit ones
    assert torch.allclose(model.log_likelihood(x, num_samples=37), exact, atol=2e-4)
    assert torch.allclose(model.log_likelihood(x, num_samples=37, chunk_size=10), exact, atol=2e-4)
    # a last chunk padded to the others' size counts only its first samples (one more would add log(31/30))
    model, x = _linear_model(scale_param=scale_param)[0], _data()
    _set_posterior(model, levels)
    _room_for(model, 7, monkeypatch)
    assert torch.allclose(model.log_likelihood(x, num_samples=30), exact, atol=2e-4)  # 1, then 5 x 6 for 29
    assert torch.allclose(model.log_likelihood(x, num_samples=27), exact, atol=2e-4)  # 4 x 7 for 27
    # the analytic-KL ELBO is unbiased for the same value
    n = 20000
    elbo = model(x.repeat(n, 1), beta=1.0).elbo.view(n, -1)
    se = elbo.std(0) / math.sqrt(n)
    assert ((elbo.mean(0) - exact).abs() < 5 * se + 1e-4).all()


def test_a_compiled_iw_bound_is_exact_with_the_exact_posterior():
    """A real torch.compile (inductor) of the IW bound's chunks: every importance weight still equals p(x)."""
    model, params = _linear_model()
    m, S, levels = _exact(params)
    _set_posterior(model, levels)
    model.set_compile("always")
    x = _data()
    bound = model.log_likelihood(x, num_samples=25, chunk_size=10)  # chunks 10 and 10 compiled, 5 eager
    if model.iw_compiler.status != "compiled":
        pytest.skip(f"torch.compile is not available here: {model.iw_compiler.status}")
    assert torch.allclose(bound, _log_px(x, m, S), atol=2e-4)


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_elbo_below_log_px_and_iw_bound_rises_to_it(inference):
    model, params = _linear_model(inference)
    m, S, levels = _exact(params)
    if inference == "ladder":
        _set_posterior(model, levels, sigma_factor=1.6, shift=0.5)  # a deliberately poor q
    x = _data()
    exact = _log_px(x, m, S)
    torch.manual_seed(0)
    n = 4000
    elbo = model(x.repeat(n, 1), beta=1.0).elbo.view(n, -1).mean(0)
    assert (elbo < exact - 0.05).all()
    bounds, errors = [], []
    for k in (1, 10, 100, 5000):
        reps = torch.stack(
            [model.log_likelihood(x, num_samples=k, chunk_size=997) for _ in range(8 if k == 5000 else 40)]
        )
        bounds.append(reps.mean(0))
        errors.append(reps.std(0) / math.sqrt(len(reps)))
    for lo, hi in zip(bounds, bounds[1:]):
        assert (hi >= lo - 0.02).all()
    gap_1 = exact - bounds[0]
    gap_k = exact - bounds[-1]
    assert (gap_k < 0.25 * gap_1 + 0.02).all(), (gap_1, gap_k)
    # at K = 5000 the bound reaches log p(x) within its Monte Carlo error
    assert (gap_k.abs() < 4 * errors[-1] + 0.01).all(), (gap_k, errors[-1])


def test_iw_chunking_does_not_change_the_estimate():
    model, params = _linear_model()
    _set_posterior(model, _exact(params)[2], sigma_factor=1.3, shift=0.2)
    x = _data()
    torch.manual_seed(3)
    a = model.log_likelihood(x, num_samples=64, chunk_size=64)
    torch.manual_seed(3)
    b = model.log_likelihood(x, num_samples=64, chunk_size=64)
    assert torch.equal(a, b)
    c = torch.stack([model.log_likelihood(x, num_samples=64, chunk_size=5) for _ in range(50)])
    d = torch.stack([model.log_likelihood(x, num_samples=64, chunk_size=64) for _ in range(50)])
    se = (c.var(0) / 50 + d.var(0) / 50).sqrt()
    assert ((c.mean(0) - d.mean(0)).abs() < 4 * se + 1e-3).all()
