"""Gaussian latents: log-density, KL against Monte Carlo, the Ladder VAE merge as a product of Gaussians."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hvae.distributions import (
    Gaussian,
    GaussianFamily,
    StandardNormal,
    kl_divergence,
    raw_from_scale,
    scale_from_raw,
)

means = st.floats(-5.0, 5.0, allow_nan=False)
scales = st.floats(0.05, 5.0, allow_nan=False)


def _gauss(mu, sigma, dtype=torch.float64):
    return Gaussian(torch.tensor([mu], dtype=dtype), torch.tensor([sigma], dtype=dtype))


def _random_pair(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = Gaussian(
        torch.randn(n, generator=g, dtype=torch.float64), 0.3 + torch.rand(n, generator=g, dtype=torch.float64)
    )
    p = Gaussian(
        torch.randn(n, generator=g, dtype=torch.float64), 0.3 + torch.rand(n, generator=g, dtype=torch.float64)
    )
    return q, p


def test_log_prob_and_entropy_match_torch_normal():
    q, _ = _random_pair()
    z = torch.randn(7, 5, dtype=torch.float64)
    ref = torch.distributions.Normal(q.mu, q.sigma)
    assert torch.allclose(q.log_prob(z), ref.log_prob(z))
    assert torch.allclose(q.entropy(), ref.entropy())
    std = StandardNormal((7, 5), dtype=torch.float64)
    assert torch.allclose(std.log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z))


@pytest.mark.parametrize("standard_prior", [False, True])
def test_analytic_kl_agrees_with_monte_carlo_within_its_standard_error(standard_prior):
    q, p = _random_pair(seed=1)
    if standard_prior:
        p = StandardNormal(q.shape, dtype=torch.float64)
    torch.manual_seed(0)
    n = 200_000
    z = q.mu + q.sigma * torch.randn(n, *q.shape, dtype=torch.float64)
    terms = q.log_prob(z) - p.log_prob(z)
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(n)
    analytic = kl_divergence(q, p)
    assert ((mc - analytic).abs() < 4 * se).all(), (mc, analytic, se)
    # and against torch's own closed form
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mu, q.sigma), torch.distributions.Normal(p.mu, p.sigma)
    )
    assert torch.allclose(analytic, ref)


def test_kl_against_standard_normal_equals_kl_against_a_zero_mean_unit_gaussian():
    q, _ = _random_pair(seed=2)
    std = StandardNormal(q.shape, dtype=torch.float64)
    generic = Gaussian(torch.zeros_like(q.mu), torch.ones_like(q.sigma))
    assert type(std) is not type(generic)
    assert torch.allclose(kl_divergence(q, std), kl_divergence(q, generic))


def test_kl_without_a_registered_pair_names_the_types_and_the_mc_option():
    class Other:
        pass

    with pytest.raises(NotImplementedError, match="Other.*kl: mc"):
        kl_divergence(Other(), Gaussian(torch.zeros(1), torch.ones(1)))


def test_merge_is_the_normalised_product_on_a_grid():
    a, b = _gauss(0.7, 0.5), _gauss(-1.2, 1.3)
    m = a.merge(b)
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    log_prod = a.log_prob(grid) + b.log_prob(grid)
    dx = grid[1] - grid[0]
    log_z = torch.logsumexp(log_prod, 0) + torch.log(dx)  # Riemann sum of a smooth, vanishing-tail density
    dens = torch.exp(log_prod - log_z)
    mean = (grid * dens).sum() * dx
    var = ((grid - mean) ** 2 * dens).sum() * dx
    assert torch.allclose(mean, m.mu, atol=1e-6)
    assert torch.allclose(var, m.sigma**2, atol=1e-6)
    # the normaliser of a product of Gaussians has the closed form N(mu_a; mu_b, s_a^2 + s_b^2)
    closed = _gauss(0.7, math.sqrt(0.5**2 + 1.3**2)).log_prob(torch.tensor([-1.2], dtype=torch.float64))
    assert torch.allclose(log_z, closed, atol=1e-8)
    # and pointwise: N_a(x) N_b(x) = Z N_merged(x)
    assert torch.allclose(log_prod, closed + m.log_prob(grid), atol=1e-8)


def test_family_merge_matches_gaussian_merge_and_from_raw_applies_the_floor():
    fam = GaussianFamily(min_scale=1e-3)
    raw = torch.randn(4, 6)
    d = fam.from_raw(raw)
    assert d.shape == (4, 3)
    assert torch.allclose(d.sigma, torch.nn.functional.softplus(raw[:, 3:]) + 1e-3)
    floored = fam.from_raw(torch.cat([torch.zeros(1, 1), torch.full((1, 1), -1e4)], 1))
    assert floored.sigma.item() == pytest.approx(1e-3)
    p = fam.from_raw(torch.randn(4, 6))
    assert torch.equal(fam.merge(d, p).mu, d.merge(p).mu)


@pytest.mark.parametrize("param", ["std", "variance"])
def test_raw_from_scale_inverts_scale_from_raw(param):
    s = torch.tensor([1e-2, 0.5, 1.0, 7.0], dtype=torch.float64)
    assert torch.allclose(scale_from_raw(raw_from_scale(s, 1e-3, param).double(), 1e-3, param), s, atol=1e-6)


def test_variance_parametrisation_is_softplus_of_the_variance_with_the_same_floor():
    fam = GaussianFamily(min_scale=1e-3, scale_param="variance")
    raw = torch.randn(4, 6, dtype=torch.float64)
    d = fam.from_raw(raw)
    assert torch.allclose(d.sigma**2, torch.nn.functional.softplus(raw[:, 3:]) + 1e-6)
    floored = fam.from_raw(torch.tensor([[0.0, -1e4]], dtype=torch.float64))
    assert floored.sigma.item() == pytest.approx(1e-3)
    # at raw = 0 the two differ: sigma = log 2 + floor against sqrt(log 2 + floor^2)
    zero = torch.zeros(1, 2, dtype=torch.float64)
    assert GaussianFamily(1e-3).from_raw(zero).sigma.item() == pytest.approx(math.log(2) + 1e-3)
    assert fam.from_raw(zero).sigma.item() == pytest.approx(math.sqrt(math.log(2) + 1e-6))


def test_an_unknown_scale_parametrisation_is_refused_not_read_as_std():
    with pytest.raises(ValueError, match="scale_param: expected one of std, variance, log, softclamp, got 'logvar'"):
        scale_from_raw(torch.zeros(2), 1e-3, "logvar")
    with pytest.raises(ValueError, match="scale_param"):
        raw_from_scale(1.0, 1e-3, "var")
    with pytest.raises(ValueError, match="scale_param"):
        GaussianFamily(1e-3, "var")


def test_temperature_scales_the_noise_and_zero_gives_the_mean():
    q, _ = _random_pair()
    assert torch.equal(q.rsample(0.0), q.mu)
    torch.manual_seed(0)
    full = q.rsample(1.0)
    torch.manual_seed(0)
    half = q.rsample(0.5)
    assert torch.allclose(half - q.mu, 0.5 * (full - q.mu))
    assert not q.sample().requires_grad


def test_rsample_carries_gradients_to_mu_and_sigma():
    mu = torch.zeros(3, requires_grad=True)
    sigma = torch.ones(3, requires_grad=True)
    Gaussian(mu, sigma).rsample().sum().backward()
    assert torch.equal(mu.grad, torch.ones(3))
    assert sigma.grad.abs().sum() > 0


def test_repeat_tiles_the_batch_sample_major():
    g = Gaussian(torch.arange(6.0).view(2, 3), torch.ones(2, 3))
    r = g.repeat(3)
    assert r.shape == (6, 3)
    assert torch.equal(r.mu[4], g.mu[0]) and torch.equal(r.mu[5], g.mu[1])


@settings(max_examples=200, deadline=None)
@given(means, scales, means, scales)
def test_kl_is_nonnegative_and_zero_only_for_equal_gaussians(mq, sq, mp, sp):
    q, p = _gauss(mq, sq), _gauss(mp, sp)
    kl = kl_divergence(q, p).item()
    assert kl >= 0
    assert kl_divergence(q, q).item() == 0
    assume(abs(mq - mp) > 1e-3 or abs(sq / sp - 1) > 1e-3)
    assert kl > 0


@settings(max_examples=200, deadline=None)
@given(means, scales, means, scales)
def test_kl_is_nonnegative_in_float32(mq, sq, mp, sp):
    q, p = _gauss(mq, sq, torch.float32), _gauss(mp, sp, torch.float32)
    assert kl_divergence(q, p).item() >= -1e-6


@settings(max_examples=200, deadline=None)
@given(means, scales, means, scales)
def test_merge_is_commutative_and_adds_precisions(m1, s1, m2, s2):
    a, b = _gauss(m1, s1), _gauss(m2, s2)
    ab, ba = a.merge(b), b.merge(a)
    assert torch.allclose(ab.mu, ba.mu, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ab.sigma, ba.sigma, rtol=1e-12)
    assert torch.allclose(ab.sigma.pow(-2), a.sigma.pow(-2) + b.sigma.pow(-2), rtol=1e-10)
    # the merged mean is a convex combination of the two means
    assert min(m1, m2) - 1e-9 <= ab.mu.item() <= max(m1, m2) + 1e-9
