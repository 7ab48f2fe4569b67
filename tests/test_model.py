"""HierarchicalVAE: shapes, gradients, the loss options, sampling, encode/decode and saved models."""

import math
import pickle

import numpy as np
import pytest
import torch

import hvae
from hvae.distributions import kl_divergence, raw_from_scale

B = 6


def _cfg(block="mlp", **overrides):
    if block == "mlp":
        base = dict(data_shape=[12], latent_dims=[4, 3, 2], hidden_dims=[16, 12, 8], depth=1)
    else:
        base = dict(data_shape=[1, 8, 8], latent_dims=[3, 2], hidden_dims=[8, 8], block="conv", strides=[2, 2])
        base["depth"] = 1
    return hvae.ModelConfig.from_dict({**base, **overrides})


def _model(block="mlp", seed=0, **overrides):
    torch.manual_seed(seed)
    return hvae.build_model(_cfg(block, **overrides))


def _x(model, n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *model.data_shape, generator=g)
    return x.round() if model.config.likelihood == "bernoulli" else x


def _twin(model, **changes):
    """The same weights under a config that differs only in loss or KL options."""
    other = hvae.build_model(model.config.replace(**changes))
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def _prior_mean_path(model, top_zs, n):
    """Latents (bottom to top) that keep ``top_zs`` (the top levels) and take the prior means below."""
    L = model.config.num_layers
    zs = [None] * (L - len(top_zs)) + list(top_zs)
    state = None
    for l in reversed(range(L)):
        layer = model.layers[l]
        p, h_p = layer.prior(state, n)
        if zs[l] is None:
            zs[l] = p.mean
        state = layer.transition(zs[l], h_p)
    return zs


# --- shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_output_and_latent_shapes_for_vector_latents(inference):
    model = _model(inference=inference)
    x = _x(model)
    out = model(x)
    assert out.elbo.shape == (B,) and out.log_px.shape == (B,) and out.loss.shape == ()
    assert len(out.kl) == 3 and all(k.shape == (B,) for k in out.kl)
    assert torch.allclose(out.elbo, out.log_px - torch.stack(out.kl).sum(0))
    zs = model.encode(x)
    assert [tuple(z.shape) for z in zs] == [(B, 4), (B, 3), (B, 2)]
    px = model.decode(zs)
    assert px.mean.shape == (B, 12) and px.sample().shape == (B, 12)
    assert model.sample(5).shape == (5, 12)
    assert model.sample_conditional(x, keep_top=1).shape == (B, 12)
    assert model.log_likelihood(x, num_samples=3).shape == (B,)


def test_spatial_latents_have_the_documented_shapes():
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.conv_small())
    x = _x(model)
    zs = model.encode(x)
    assert [tuple(z.shape) for z in zs] == [(B, 8, 4, 4), (B, 8, 2, 2)]
    assert [layer.latent_shape for layer in model.layers] == [(8, 4, 4), (8, 2, 2)]
    out = model(x)
    assert out.elbo.shape == (B,) and [k.shape for k in out.kl] == [(B,), (B,)]
    assert model.decode(zs).mean.shape == (B, 1, 8, 8)
    assert model.sample(3, temperature=[1.0, 0.5]).shape == (3, 1, 8, 8)


@pytest.mark.parametrize(
    "likelihood, extra",
    [("gaussian", {}), ("categorical", {"num_classes": 4}), ("discretized_logistic_mixture", {"num_mixtures": 2})],
)
def test_every_likelihood_runs_end_to_end_on_images(likelihood, extra):
    model = _model("conv", likelihood=likelihood, **extra)
    x = torch.randint(0, 4, (B, 1, 8, 8)).float() / 3
    out = model(x)
    assert torch.isfinite(out.elbo).all() and out.elbo.shape == (B,)
    assert model.sample(2).shape == (2, 1, 8, 8)


def test_bits_per_dim_converts_nats_per_example():
    model = _model()
    assert model.bits_per_dim(torch.tensor([-12 * math.log(2)])).item() == pytest.approx(1.0)


# --- gradients ---------------------------------------------------------------------------------------


_GRAD_CASES = (
    [
        dict(block=block, inference=inference, generative_skip=skip)
        for block in ("mlp", "conv")
        for inference in ("ladder", "top_down", "bottom_up")
        for skip in (False, True)
    ]
    + [
        dict(block=block, inference="top_down", residual_posterior=True, generative_skip=skip)
        for block in ("mlp", "conv")
        for skip in (False, True)
    ]
    + [dict(block="mlp", likelihood="gaussian")]
)


@pytest.mark.parametrize("case", _GRAD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradients_reach_every_parameter(case):
    case = dict(case)
    model = _model(case.pop("block"), **case)
    if model.config.residual_posterior:
        # the residual head starts at zero (q = p) and so passes no gradient below it; move it off zero
        with torch.no_grad():
            for layer in model.layers[:-1]:
                layer.posterior_head.weight.normal_(0, 0.1)
    model(_x(model)).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


# --- the loss options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        dict(free_bits=0.5),
        dict(free_bits=0.2, free_bits_mode="channel"),
        dict(kl_warmup_steps=10),
        dict(kl_warmup_steps=10, kl_balancing=True),
        dict(beta=0.3),
    ],
)
def test_loss_options_never_change_the_elbo(changes):
    base = _model().train()
    other = _twin(base, **changes)
    x = _x(base)
    torch.manual_seed(5)
    a = base(x)
    torch.manual_seed(5)
    b = other(x)
    assert torch.equal(a.elbo, b.elbo) and torch.equal(a.log_px, b.log_px)
    assert all(torch.equal(k, m) for k, m in zip(a.kl, b.kl))
    assert not torch.allclose(a.loss, b.loss)


def test_loss_with_beta_zero_is_the_mean_negative_log_likelihood():
    model = _model(free_bits=0.5).eval()
    out = model(_x(model), beta=0.0)
    assert torch.allclose(out.loss, -out.log_px.mean())
    full = model(_x(model), beta=1.0)
    assert full.loss > -full.log_px.mean()


def test_free_bits_lift_each_layer_below_lambda_to_exactly_lambda():
    base = _model().eval()
    x = _x(base)
    torch.manual_seed(0)
    per_layer = torch.stack([k.mean() for k in base(x).kl])
    lam = per_layer.median().item()
    model = _twin(base, free_bits=lam)
    torch.manual_seed(0)
    out = model(x, beta=1.0)
    kl = torch.stack([k.mean() for k in out.kl])
    assert (kl < lam).any() and (kl > lam).any()
    expected = -out.log_px.mean() + torch.where(kl < lam, torch.full_like(kl, lam), kl).sum()
    assert torch.allclose(out.loss, expected)


@pytest.mark.parametrize("block", ["mlp", "conv"])
def test_free_bits_per_channel_give_every_latent_channel_lambda(block):
    lam = 50.0  # far above any channel's KL at initialisation: every channel is lifted
    model = _model(block, free_bits=lam, free_bits_mode="channel").eval()
    out = model(_x(model), beta=1.0)
    channels = sum(model.config.latent_dims)
    assert torch.allclose(out.loss, -out.log_px.mean() + lam * channels)
    # a lifted KL is a constant: the KL part of the loss passes no gradient
    params = list(model.parameters())
    grads = torch.autograd.grad(out.loss + out.log_px.mean(), params, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_kl_balancing_weights_layers_by_kl_per_latent_unit_during_warm_up():
    base = _model().eval()
    model = _twin(base, kl_balancing=True, kl_warmup_steps=100)
    x = _x(base)
    torch.manual_seed(0)
    out = model(x, beta=0.5)
    kl = torch.stack([k.mean() for k in out.kl])
    gamma = (kl + 0.01) / torch.tensor([4.0, 3.0, 2.0])
    gamma = gamma / gamma.mean()
    assert torch.allclose(out.loss, -out.log_px.mean() + 0.5 * (gamma * kl).sum())
    # once beta reaches its final value balancing is off
    torch.manual_seed(0)
    full = model(x, beta=1.0)
    assert torch.allclose(full.loss, -full.log_px.mean() + kl.sum())


def test_kl_balancing_counts_the_levels_at_each_resolution_as_nvae_does():
    # two levels at 4x4 and one at 2x2 (conv_small's geometry, three levels): NVAE's coefficient of a group is
    # its KL per element times the number of groups at its scale
    torch.manual_seed(0)
    cfg = hvae.presets.conv_small(latent_dims=[4, 4, 4], hidden_dims=[8, 8, 8], strides=[2, 1, 2])
    model = hvae.build_model(cfg.replace(kl_balancing=True, kl_warmup_steps=100)).eval()
    assert [tuple(layer.latent_shape[1:]) for layer in model.layers] == [(4, 4), (4, 4), (2, 2)]
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.5))
    torch.manual_seed(0)
    out = model(x, beta=0.5)
    kl = torch.stack([k.mean() for k in out.kl])
    gamma = (kl + 0.01) * torch.tensor([2.0, 2.0, 1.0]) / torch.tensor([64.0, 64.0, 16.0])
    gamma = gamma / gamma.mean()
    assert torch.allclose(out.loss, -out.log_px.mean() + 0.5 * (gamma * kl).sum())


def test_kl_warm_up_is_linear_and_step_advances_only_when_training_with_gradients():
    model = _model(kl_warmup_steps=4, beta=0.8)
    assert [model.beta_at(s) for s in (0, 1, 2, 4, 100)] == pytest.approx([0.0, 0.2, 0.4, 0.8, 0.8])
    assert _model(beta=0.7).beta_at(3) == 0.7
    x = _x(model)
    model.train()
    out = model(x)
    assert out.beta == 0.0 and model.step.item() == 1
    assert torch.allclose(out.loss, -out.log_px.mean())  # beta = 0 at the first step
    assert model(x).beta == pytest.approx(0.2) and model.step.item() == 2
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    assert model.step.item() == 2
    model.train()
    out = model(x, beta=1.0)  # a schedule of the user's own: the weight given, and still a training step
    assert out.beta == 1.0 and model.step.item() == 3
    assert torch.allclose(out.loss, -out.log_px.mean() + torch.stack(out.kl).sum(0).mean())
    with torch.no_grad():
        model(x, beta=1.0)
    assert model.step.item() == 3


def test_kl_mc_and_analytic_agree_in_expectation():
    model = _model(inference="top_down").eval()
    mc = _twin(model, kl="mc")
    x = _x(model, n=2).repeat(3000, 1)
    torch.manual_seed(0)
    exact = torch.stack(model(x).kl).view(3, 3000, 2)
    mcs = torch.stack(mc(x).kl).view(3, 3000, 2)
    se = (exact.var(1) / 3000 + mcs.var(1) / 3000).sqrt()
    assert ((exact.mean(1) - mcs.mean(1)).abs() < 4 * se + 1e-4).all()
    assert mcs.var(1).sum() > exact.var(1).sum()  # the analytic term has the smaller variance


def test_iw_bound_with_one_sample_is_the_single_sample_elbo():
    model = _model(kl="mc").eval()
    x = _x(model)
    torch.manual_seed(3)
    elbo = model(x).elbo
    torch.manual_seed(3)
    assert torch.allclose(model.log_likelihood(x, num_samples=1), elbo, atol=1e-5)


@pytest.mark.parametrize("block", ["mlp", "conv"])
def test_iw_automatic_chunks_keep_every_per_row_tensor_under_the_budget(block, monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode

    import hvae.iw as model_module

    class Widest(TorchDispatchMode):  # the widest tensor of rows x ... an aten op returns, at the op level
        def __init__(self, rows):
            super().__init__()
            self.rows, self.numel = rows, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == self.rows:
                    self.numel = max(self.numel, t.numel())
            return out

    model = _model(block).eval()
    x = _x(model)
    with torch.no_grad(), Widest(B) as one:  # one importance sample: the widest tensor per input
        model._iw_log_weights(model._bottom_up(x), model.likelihood.prepare(x), 1)
    width = one.numel // B
    budget = 7 * B * width + 3  # room for 7 samples per input
    monkeypatch.setitem(model_module.IW_CHUNK_ELEMENTS, "cpu", budget)
    chunks, widest = [], []
    run_chunk = model._iw_log_weights

    def spy(ctxs, x_k, k):
        chunks.append(k)
        with Widest(k * B) as w:
            out = run_chunk(ctxs, x_k, k)
        widest.append(w.numel)
        return out

    monkeypatch.setattr(model, "_iw_log_weights", spy)  # the first sample, and a shorter last chunk
    monkeypatch.setattr(model.iw_compiler, "fn", lambda self, *args: spy(*args))  # the others (eager)
    model.log_likelihood(x, num_samples=30)
    # the first sample alone measures; then 29 in five even chunks: the last, one short, runs at their size
    assert chunks == [1, 6, 6, 6, 6, 6]
    assert max(widest) <= budget
    chunks.clear()
    model.log_likelihood(x, num_samples=30)  # the width is known for this input shape: no sample alone
    assert chunks == [6, 6, 6, 6, 6]
    chunks.clear()
    model.log_likelihood(x, num_samples=30, chunk_size=12)  # an explicit chunk size is kept
    assert chunks == [12, 12, 6]  # the last, short by half, runs at its own size
    with pytest.raises(ValueError, match="chunk_size"):
        model.log_likelihood(x, num_samples=3, chunk_size=0)


# --- posteriors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_param", ["std", "variance"])
@pytest.mark.parametrize("block", ["mlp", "conv"])
def test_residual_posterior_starts_at_the_prior(block, scale_param):
    model = _model(block, inference="top_down", residual_posterior=True, scale_param=scale_param).eval()
    out = model(_x(model))
    assert all(torch.allclose(k, torch.zeros(B), atol=1e-5) for k in out.kl[:-1])
    assert (out.kl[-1] > 0).all()  # the top level has no prior network: q(z_L | x) is free from the start
    plain = _model(block, inference="top_down").eval()
    assert (plain(_x(plain)).kl[0] > 1e-3).all()


@pytest.mark.parametrize("scale_param", ["std", "variance"])
def test_residual_posterior_is_the_prior_shifted_and_scaled(scale_param):
    """The residual posterior's scale ratio follows ``scale_param`` too (under ``variance`` the softplus gives
    its square), and a zero output is the ratio 1 either way."""
    model = _model(inference="top_down", residual_posterior=True, scale_param=scale_param).eval()
    layer = model.layers[0]
    d_mu = torch.tensor([0.5, -1.0, 0.0, 2.0])
    d_sigma = torch.tensor([0.5, 1.0, 2.0, 0.1])
    softplus_inv_one = raw_from_scale(1.0, 0.0)
    raw_ds = raw_from_scale(d_sigma, 0.0, scale_param) - softplus_inv_one
    if scale_param == "variance":  # the same ratios need other raw values than under std
        assert not torch.allclose(raw_ds, raw_from_scale(d_sigma, 0.0) - softplus_inv_one, atol=1e-2)
    with torch.no_grad():
        layer.posterior_head.weight.zero_()
        layer.posterior_head.bias.copy_(torch.cat([d_mu, raw_ds]))
    x = _x(model)
    with torch.no_grad():
        ctx = layer.context(model.encoder[0](x.flatten(1)))
        p, h_p = layer.prior(torch.randn(B, 3), B)
        q = layer.posterior(ctx, p, h_p)
    assert torch.allclose(q.mu, p.mu + d_mu, atol=1e-6)
    assert torch.allclose(q.sigma, p.sigma * d_sigma, atol=1e-6)
    with torch.no_grad():  # a head driven far negative: sigma_q stays at the floor, the KL finite
        layer.posterior_head.bias.copy_(torch.cat([d_mu, torch.full((4,), -200.0)]))
        q = layer.posterior(ctx, p, h_p)
    assert (q.sigma == model.config.min_scale).all() and torch.isfinite(kl_divergence(q, p)).all()


def test_ladder_posterior_is_at_least_as_precise_as_the_prior():
    model = _model().eval()
    layer = model.layers[0]
    x = _x(model)
    with torch.no_grad():
        ctx = layer.context(model.encoder[0](x.flatten(1)))
        p, h_p = layer.prior(torch.randn(B, 3), B)
        q = layer.posterior(ctx, p, h_p)
    assert (q.sigma < p.sigma).all()


# --- sampling, encode, decode -------------------------------------------------------------------------


@pytest.mark.parametrize("block, skip", [("mlp", False), ("mlp", True), ("conv", False)])
def test_temperature_zero_is_deterministic_and_decodes_the_prior_means(block, skip):
    model = _model(block, generative_skip=skip).eval()
    a = model.sample(4, temperature=0)
    assert torch.equal(a, model.sample(4, temperature=0))
    assert torch.equal(a, model.sample(4, temperature=[0.0] * model.config.num_layers))
    expected = model.decode(_prior_mean_path(model, [], 4)).mean
    assert torch.allclose(a, expected)
    torch.manual_seed(0)
    b = model.sample(4, temperature=1.0)
    assert not torch.allclose(a, b)


def test_per_layer_temperature_zero_fixes_only_those_levels():
    model = _model().eval()
    L = model.config.num_layers
    # noise in the bottom level only: the top levels follow the prior means
    torch.manual_seed(0)
    bottom_only = model.sample(3, temperature=[1.0] + [0.0] * (L - 1), mean=True)
    torch.manual_seed(1)
    other = model.sample(3, temperature=[1.0] + [0.0] * (L - 1), mean=True)
    assert not torch.allclose(bottom_only, other)
    with pytest.raises(ValueError, match="one per layer"):
        model.sample(3, temperature=[1.0, 0.0])


def test_temperatures_may_be_numpy_or_tensor_scalars():
    model = _model().eval()
    draws = []
    for t in (0.5, np.float32(0.5), torch.tensor(0.5), [np.float64(0.5)] * model.config.num_layers):
        torch.manual_seed(0)
        draws.append(model.sample(3, temperature=t))
    assert all(torch.equal(draws[0], d) for d in draws[1:])


def test_float32_data_into_a_float64_model_is_accepted():
    model = _model().eval().double()
    x = _x(model)
    torch.manual_seed(0)
    a = model(x).elbo
    torch.manual_seed(0)
    b = model(x.double()).elbo  # the networks in float64 either way; the likelihood reads x as given
    assert torch.allclose(a.double(), b, atol=1e-5)
    assert model.log_likelihood(x, num_samples=4).isfinite().all()


def test_sample_without_mean_draws_from_the_likelihood():
    model = _model().eval()
    s = model.sample(8, mean=False)
    assert ((s == 0) | (s == 1)).all()


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_encode_means_are_deterministic_and_samples_vary(inference):
    model = _model(inference=inference).eval()
    x = _x(model)
    m1, m2 = model.encode(x, sample=False), model.encode(x, sample=False)
    assert all(torch.equal(a, b) for a, b in zip(m1, m2))
    torch.manual_seed(0)
    s1 = model.encode(x)
    assert all(not torch.allclose(a, b) for a, b in zip(s1, m1))


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_sample_conditional_keeping_all_levels_is_a_reconstruction_and_ignores_temperature(inference):
    model = _model(inference=inference).eval()
    x = _x(model)
    L = model.config.num_layers
    outs = []
    for t in (0.0, 1.0, [0.5, 2.0, 0.0]):
        torch.manual_seed(7)
        outs.append(model.sample_conditional(x, keep_top=L, temperature=t))
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    torch.manual_seed(7)
    assert torch.allclose(outs[0], model.decode(model.encode(x)).mean)


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
@pytest.mark.parametrize("keep_top", [1, 2])
def test_sample_conditional_at_temperature_zero_keeps_the_top_and_takes_prior_means_below(inference, keep_top):
    model = _model(inference=inference, generative_skip=True).eval()
    x = _x(model)
    L = model.config.num_layers
    torch.manual_seed(7)
    got = model.sample_conditional(x, keep_top=keep_top, temperature=0.0)
    torch.manual_seed(7)
    top = model.encode(x)[L - keep_top :]
    expected = model.decode(_prior_mean_path(model, top, B)).mean
    assert torch.allclose(got, expected, atol=1e-6)


def test_sample_conditional_keeping_nothing_ignores_x():
    model = _model().eval()
    x = _x(model)
    assert torch.equal(model.sample_conditional(x, keep_top=0, temperature=0), model.sample(B, temperature=0))
    with pytest.raises(ValueError, match="keep_top must be in 0..3"):
        model.sample_conditional(x, keep_top=4)


def test_decode_without_skip_depends_on_z1_only():
    model = _model().eval()
    zs = model.encode(_x(model))
    other = [zs[0]] + [torch.randn_like(z) for z in zs[1:]]
    assert torch.equal(model.decode(zs).mean, model.decode(other).mean)


# --- inputs the model refuses ---------------------------------------------------------------------------


def test_inputs_of_the_wrong_shape_or_dtype_raise_clear_errors():
    model = _model()
    x = _x(model)
    with pytest.raises(ValueError, match=r"shape \(6, 3, 4\).*\(B, 12\).*reshape"):
        model(x.view(B, 3, 4))
    with pytest.raises(ValueError, match=r"takes \(B, 12\)"):
        model(torch.rand(B, 13))
    with pytest.raises(ValueError, match="takes"):
        model(x[0])
    with pytest.raises(TypeError, match="floating"):
        model(x.long())
    with pytest.raises(TypeError, match="torch.Tensor"):
        model(x.numpy())
    with pytest.raises(ValueError, match="empty"):
        model(x[:0])
    for call in (model.encode, lambda t: model.log_likelihood(t, 2), lambda t: model.sample_conditional(t, 1)):
        with pytest.raises(ValueError, match="takes"):
            call(x.view(B, 3, 4))
    with pytest.raises(ValueError, match="num_samples"):
        model.log_likelihood(x, num_samples=0)


def test_evaluation_calls_refuse_data_outside_the_likelihoods_support():
    model = _model().eval()  # Bernoulli
    x = _x(model)
    bad = x.clone()
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="needs binary data"):
        model(bad)
    with pytest.raises(ValueError, match="needs binary data"):
        model.log_likelihood(bad, num_samples=2)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.log_likelihood(bad, num_samples=2)
    assert model.log_likelihood(x, num_samples=2).isfinite().all()


def test_decode_rejects_latents_of_the_wrong_count_or_shape():
    model = _model()
    zs = model.encode(_x(model))
    with pytest.raises(ValueError, match=r"one latent per level \(3"):
        model.decode(zs[:2])
    with pytest.raises(ValueError, match=r"zs\[1\] has shape \(6, 5\), expected \(B, 3\)"):
        model.decode([zs[0], torch.randn(B, 5), zs[2]])
    with pytest.raises(ValueError, match=r"zs\[2\] has shape \(4, 5\), expected \(B, 2\)"):
        model.generate([None, None, torch.randn(4, 5)])
    with pytest.raises(ValueError, match=r"zs\[2\] holds 4 rows but the levels below hold 6"):
        model.generate([None, zs[1], zs[2][:4]])
    assert model.generate([None, None, zs[2]]).shape == (B, *model.data_shape)


def test_only_a_pass_that_inferred_every_level_is_scored():
    """log q(z | x) and the KL need q at every level: a pass drawn from the prior is refused, by name."""
    model = _model().eval()
    x = _x(model)
    with torch.no_grad():
        assert model._log_weights(x, model._infer(x)).isfinite().all()
        prior = model._top_down(B)
        with pytest.raises(ValueError, match="drew levels from the prior"):
            model._log_weights(x, prior)
        with pytest.raises(ValueError, match="drew levels from the prior"):
            model._kl_terms(prior)
        with pytest.raises(ValueError, match="the batch x or its bottom-up contexts"):
            model._infer(None)


# --- saved models ------------------------------------------------------------------------------------


def _trained(block="mlp", **overrides):
    """A model after one optimiser step: weights, batch-norm statistics and ``step`` all moved."""
    model = _model(block, **overrides).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(_x(model)).loss.backward()
    opt.step()
    return model.eval()


@pytest.mark.parametrize(
    "block, overrides",
    [("mlp", dict(likelihood="gaussian", generative_skip=True)), ("conv", dict(inference="top_down"))],
)
def test_save_load_round_trip_gives_identical_outputs(tmp_path, monkeypatch, block, overrides):
    model = _trained(block, **overrides)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = hvae.load(tmp_path / "m").eval()
    assert loaded.config == model.config and loaded.step.item() == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = _x(model)
    for fn in (
        lambda m: m(x).elbo,
        lambda m: m.log_likelihood(x, num_samples=4),
        lambda m: m.sample(3, temperature=0.7),
    ):
        torch.manual_seed(11)
        a = fn(model)
        torch.manual_seed(11)
        assert torch.equal(a, fn(loaded))


def test_loading_a_missing_model_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hvae.load(tmp_path / "nowhere")
    _model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hvae.load(tmp_path / "m")


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated tensors
        lambda b: b[:20],  # truncated header
        lambda b: b"",
        lambda b: b"not a safetensors file at all",
        lambda b: (2**62).to_bytes(8, "little") + b[8:],  # header length far past the end
        lambda b: b[:8] + b"\xff" * 16 + b[24:],  # header not JSON
    ],
    ids=["half", "header", "empty", "text", "huge-header", "garbled-header"],
)
def test_loading_corrupted_weights_raises_value_error(tmp_path, damage):
    _model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match="model.safetensors"):
        hvae.load(tmp_path)


def test_loading_weights_of_another_architecture_or_a_damaged_config_raises_value_error(tmp_path):
    _model().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(_cfg(latent_dims=[5, 3, 2]).to_json())
    with pytest.raises(ValueError, match=r"latent_dims is \[5, 3, 2\] there but \[4, 3, 2\]"):
        hvae.load(tmp_path)
    (tmp_path / "config.json").write_text(_cfg(beta=0.5).to_json())  # the same shapes: only the saves tell
    with pytest.raises(ValueError, match="beta is 0.5 there but 1.0"):
        hvae.load(tmp_path)
    # weights saved without their config (an older hvae): the shapes are still checked
    from safetensors.torch import load_file, save_file

    save_file(load_file(tmp_path / "model.safetensors"), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(_cfg(inference="top_down").to_json())
    with pytest.raises(ValueError, match="does not match"):
        hvae.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        hvae.load(tmp_path)
    (tmp_path / "config.json").write_text('{"latent_dimz": [4]}')
    with pytest.raises(hvae.ConfigError, match="unknown key latent_dimz"):
        hvae.load(tmp_path)


def test_a_float64_model_comes_back_in_float64(tmp_path):
    model = _model().double().eval()
    model.save_pretrained(tmp_path)
    back = hvae.load(tmp_path)
    x = _x(model).double()
    assert back.decoder_head.weight.dtype == torch.float64
    torch.manual_seed(0)
    a = model(x).elbo
    torch.manual_seed(0)
    assert torch.equal(back(x).elbo, a)


def test_inference_folds_batch_norm_into_the_products_without_changing_numbers():
    """Eval mode without gradients runs Linear + BatchNorm as one product (and activations in place): the
    same ELBO and IW bound as the unfolded eval pass, and the caller's input is left untouched."""
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small(batch_norm=True))
    x = torch.bernoulli(torch.full((32, 64), 0.4))
    for _ in range(3):
        model(x)  # move the running statistics away from their initial values
    model.eval()
    block = model.encoder[0]
    h = torch.randn(5, 64)
    h0 = h.clone()
    with torch.no_grad():
        folded = block(h)
    unfolded = torch.nn.Sequential(*block)(h)
    assert torch.equal(h, h0) and torch.allclose(folded, unfolded, rtol=1e-5, atol=1e-5)
    assert block[1].running_mean.abs().sum() > 0.1  # the running statistics (what is folded) have moved
    torch.manual_seed(1)
    with torch.no_grad():
        elbo_folded = model(x).elbo
    torch.manual_seed(1)
    elbo = model(x).elbo.detach()
    assert torch.allclose(elbo_folded, elbo, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [-1, 0, 2.5, True, "3"])
def test_sample_refuses_a_count_that_is_not_a_whole_number_above_zero(n):
    with pytest.raises(ValueError, match=r"n \(the number of samples\) must be a whole number >= 1, got"):
        _model().eval().sample(n)


def test_sample_takes_numpy_integer_counts():
    assert _model().eval().sample(np.int64(2)).shape == (2, 12)


def test_iw_bound_refuses_counts_that_are_not_whole_numbers_above_zero():
    model = _model().eval()
    x = _x(model)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"num_samples must be a whole number >= 1, got {bad!r}"):
            model.log_likelihood(x, num_samples=bad)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match=rf"chunk_size must be a whole number >= 1 or None .automatic., got {bad}"):
            model.log_likelihood(x, num_samples=3, chunk_size=bad)
    torch.manual_seed(0)
    a = model.log_likelihood(x, num_samples=np.int32(3), chunk_size=np.int64(2))
    torch.manual_seed(0)
    assert torch.equal(a, model.log_likelihood(x, num_samples=3, chunk_size=2))


@pytest.mark.parametrize(
    "temperature",
    [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), torch.tensor(math.nan), [1.0, math.inf, 1.0]],
    ids=["nan", "inf", "-inf", "np-nan", "np-inf", "tensor-nan", "list-inf"],
)
def test_non_finite_temperatures_are_refused_like_negative_ones(temperature):
    model = _model().eval()
    x = _x(model)
    zs = model.encode(x)
    calls = [
        lambda: model.sample(3, temperature=temperature),
        lambda: model.generate([None, None, zs[2]], temperature=temperature),
        lambda: model.sample_conditional(x, keep_top=1, temperature=temperature),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"temperature: must be finite and >= 0"):
            call()


def test_sample_conditional_refuses_a_keep_top_that_is_not_a_level_count():
    model = _model().eval()
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ValueError, match=rf"keep_top must be in 0..3, got {bad}"):
            model.sample_conditional(_x(model), keep_top=bad)
