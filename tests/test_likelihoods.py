"""Observation models p(x | z_1): each sums to one over its support, or matches a reference density."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import hvae
from hvae.likelihoods import (
    Bernoulli,
    Categorical,
    DiscretizedLogisticMixture,
    Gaussian,
    ObservationDistribution,
    _softplus_groups,
    build_likelihood,
    sum_softplus,
)


def _params(model, batch=3, seed=0, spatial=None):
    """Random decoder output in channel layout (B, num_params, *spatial)."""
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, model.num_params, *(spatial or model.spatial), generator=g, dtype=torch.float64)


def _all_values(levels, n):
    """Every vector of n entries drawn from ``levels``: (len(levels)^n, n)."""
    return torch.tensor(list(itertools.product(levels, repeat=n)), dtype=torch.float64)


def _total_mass(dist, xs, batch):
    """log sum_x p(x) for each of the ``batch`` parameter sets; xs (N, *data_shape)."""
    n = xs.shape[0]
    # (N*batch, ...) rows: value-major, every value scored under every parameter set
    lp = dist.log_prob(xs.repeat_interleave(batch, 0)).view(n, batch)
    return torch.logsumexp(lp, 0)


def _tile_dist(model, params, n):
    return model(params.repeat(n, *([1] * (params.dim() - 1))))


@pytest.mark.parametrize("data_shape", [(4,), (1, 2, 2)])
def test_bernoulli_sums_to_one_over_all_binary_vectors(data_shape):
    model = Bernoulli(data_shape)
    params = _params(model)
    D = math.prod(data_shape)
    xs = _all_values([0.0, 1.0], D).view(-1, *data_shape)
    mass = _total_mass(_tile_dist(model, params, xs.shape[0]), xs, 3)
    assert torch.allclose(mass, torch.zeros(3, dtype=torch.float64), atol=1e-10)


def test_bernoulli_mean_and_samples():
    model = Bernoulli((5,))
    params = _params(model)
    dist = model(params)
    assert torch.allclose(dist.mean, torch.sigmoid(params).view(3, 5))
    s = dist.sample()
    assert s.shape == (3, 5) and ((s == 0) | (s == 1)).all()


@pytest.mark.parametrize("as_index", [False, True])
def test_categorical_sums_to_one_over_all_values(as_index):
    K, D = 5, 2
    model = Categorical((D,), num_classes=K)
    params = _params(model)
    ks = _all_values(range(K), D)
    xs = ks.long() if as_index else ks / (K - 1)
    mass = _total_mass(_tile_dist(model, params, xs.shape[0]), xs, 3)
    assert torch.allclose(mass, torch.zeros(3, dtype=torch.float64), atol=1e-10)


def test_categorical_reads_levels_and_indices_alike_and_its_mean_is_the_expected_level():
    K = 4
    model = Categorical((1, 2, 3), num_classes=K)  # an image (C, H, W)
    params = _params(model)
    dist = model(params)
    k = torch.randint(0, K, (3, 1, 2, 3))
    assert torch.allclose(dist.log_prob(k), dist.log_prob(k.double() / (K - 1)))
    logits = params.view(3, K, 1, 2, 3)
    ref = torch.distributions.Categorical(logits=logits.movedim(1, -1)).log_prob(k).flatten(1).sum(1)
    assert torch.allclose(dist.log_prob(k), ref)
    levels = torch.arange(K, dtype=torch.float64) / (K - 1)
    expected = (F.softmax(logits, 1) * levels.view(1, K, 1, 1, 1)).sum(1)
    assert torch.allclose(dist.mean, expected)
    s = dist.sample()
    assert s.shape == (3, 1, 2, 3) and torch.allclose(s * (K - 1), (s * (K - 1)).round())


def test_categorical_reads_a_value_near_a_level_as_that_level():
    K = 256
    model = Categorical((K,), num_classes=K)
    dist = model(torch.randn(1, K, K))
    k = torch.arange(K).view(1, K)
    # within the tolerance check_support accepts (arithmetic on the data may move a level slightly)
    jitter = torch.where(k % 2 == 0, -1e-4, 1e-4) / (K - 1)
    levels = (k.double() / (K - 1) + jitter).clamp(0, 1)
    model.check_support(levels)
    assert torch.equal(dist.log_prob(levels), dist.log_prob(k))


@pytest.mark.parametrize("scale", [None, 0.3])
def test_gaussian_matches_torch_normal(scale):
    model = Gaussian((2, 3), scale=scale).double()
    if scale is None:
        with torch.no_grad():
            model.raw_scale.normal_()
        sigma = F.softplus(model.raw_scale) + model.min_scale
    else:
        sigma = torch.full((2, 3), scale, dtype=torch.float64)
    params = _params(model)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(params, sigma).log_prob(x).flatten(1).sum(1)
    dist = model(params)
    assert torch.allclose(dist.log_prob(x), ref)
    assert torch.equal(dist.mean, params)


def test_gaussian_learned_scale_starts_at_one_and_is_a_parameter():
    model = Gaussian((4,))
    assert torch.allclose(model.scale, torch.ones(1, 4), atol=1e-6)
    assert any(p is model.raw_scale for p in model.parameters())
    assert list(Gaussian((4,), scale=0.5).parameters()) == []


def _dlm_values(bits, C):
    return _all_values(range(2**bits), C) / (2**bits - 1)  # the data convention: level k is k / (2^bits - 1)


@pytest.mark.parametrize("C", [1, 2, 3])
@pytest.mark.parametrize("bits", [8, 5])
def test_discretized_logistic_mixture_sums_to_one_over_all_pixel_values(C, bits):
    if C == 3 and bits == 8:
        pytest.skip("2^24 values: C = 3 is covered at 5 bits")
    model = DiscretizedLogisticMixture((C, 1, 1), num_mixtures=3, num_bits=bits)
    params = _params(model, batch=2, seed=C + bits)
    params[:, 3:] = 0.6 * params[:, 3:]  # means near [-1, 1], log-scales around 0 +- 1.2; coefficients nonzero
    xs = _dlm_values(bits, C).view(-1, C, 1, 1)
    mass = _total_mass(_tile_dist(model, params, xs.shape[0]), xs, 2)
    assert torch.allclose(mass, torch.zeros(2, dtype=torch.float64), atol=1e-6), mass


def test_discretized_logistic_mixture_sums_to_one_when_sharp():
    model = DiscretizedLogisticMixture((2, 1, 1), num_mixtures=2, num_bits=8)
    params = _params(model, batch=2, seed=7)
    dist = model(params)
    # every log-scale at the floor (-7): bins far from the mean fall back to density x bin width
    params_sharp = params.clone()
    log_s = dist.log_s.clone().fill_(-20.0)
    rest = torch.cat([dist.mu, log_s, torch.atanh(dist.coeffs)], dim=2).reshape(2, -1, 1, 1)
    params_sharp[:, 2:] = rest
    xs = _dlm_values(8, 2).view(-1, 2, 1, 1)
    mass = _total_mass(_tile_dist(model, params_sharp, xs.shape[0]), xs, 2)
    assert torch.allclose(mass, torch.zeros(2, dtype=torch.float64), atol=1e-3), mass


def _logistic_bin_prob(x, mu, s, bins):
    """P(value in the bin centred at x) for a logistic(mu, s) on [-1, 1] cut into bins + 1 bins, edges open."""
    half = 1.0 / bins
    hi = 1.0 if x > 0.999 else torch.sigmoid((x + half - mu) / s)
    lo = 0.0 if x < -0.999 else torch.sigmoid((x - half - mu) / s)
    return hi - lo


def test_discretized_logistic_mixture_matches_a_hand_computed_two_channel_pixel():
    """p(x) = sum_k pi_k P_k(x_0) P_k(x_1 | mean mu_k1 + a_k x_0), in [-1, 1] units (PixelCNN++)."""
    bits, M, C = 5, 2, 2
    bins = 2**bits - 1
    model = DiscretizedLogisticMixture((C, 1, 1), num_mixtures=M, num_bits=bits)
    params = _params(model, batch=1, seed=11) * 0.5
    dist = model(params)
    pi = F.softmax(dist.logit_pi[0, :, 0, 0], 0)
    mu, s, a = dist.mu[0, :, :, 0, 0], dist.log_s[0, :, :, 0, 0].exp(), dist.coeffs[0, :, 0, 0, 0]
    assert (a.abs() > 1e-3).all()
    for k0, k1 in [(0, 0), (3, 17), (bins, 9), (12, bins)]:
        x0, x1 = 2 * k0 / bins - 1, 2 * k1 / bins - 1
        p = sum(
            pi[m]
            * _logistic_bin_prob(x0, mu[m, 0], s[m, 0], bins)
            * _logistic_bin_prob(x1, mu[m, 1] + a[m] * x0, s[m, 1], bins)
            for m in range(M)
        )
        x = torch.tensor([k0, k1], dtype=torch.float64).view(1, 2, 1, 1) / bins
        assert torch.allclose(dist.log_prob(x), torch.log(p).view(1), atol=1e-8)


def test_discretized_logistic_mixture_samples_lie_on_the_levels():
    model = DiscretizedLogisticMixture((3, 2, 2), num_mixtures=4, num_bits=5)
    dist = model(_params(model, batch=5))
    s = dist.sample()
    assert s.shape == (5, 3, 2, 2) and (s >= 0).all() and (s <= 1).all()
    assert torch.allclose(s * 31, (s * 31).round())
    m = dist.mean
    assert m.shape == (5, 3, 2, 2) and (m >= 0).all() and (m <= 1).all()


def test_support_checks_name_the_likelihood_and_the_fix():
    with pytest.raises(ValueError, match="bernoulli.*binar"):
        Bernoulli((3,)).check_support(torch.tensor([[0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="categorical"):
        Categorical((2,), num_classes=4).check_support(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DiscretizedLogisticMixture((1, 1, 1)).check_support(torch.tensor([[[[1.5]]]]))
    with pytest.raises(ValueError, match="NaN"):
        Gaussian((1,), scale=1.0).check_support(torch.tensor([[math.nan]]))
    Categorical((2,), num_classes=4).check_support(torch.tensor([[0.0, 2 / 3]]))
    Bernoulli((3,)).check_support(torch.tensor([[0.0, 1.0, 1.0]]))


@pytest.mark.parametrize(
    "overrides, cls",
    [
        (dict(likelihood="bernoulli"), Bernoulli),
        (dict(likelihood="gaussian", likelihood_scale=0.1), Gaussian),
        (dict(likelihood="categorical", num_classes=16), Categorical),
        (dict(likelihood="discretized_logistic_mixture", num_bits=5, num_mixtures=2), DiscretizedLogisticMixture),
    ],
)
def test_build_likelihood_follows_the_config(overrides, cls):
    cfg = hvae.presets.conv_small(**overrides)
    lik = build_likelihood(cfg)
    assert isinstance(lik, cls) and lik.data_shape == (1, 8, 8)
    if cls is DiscretizedLogisticMixture:
        assert lik.bits == 5 and lik.num_params == 2 * (1 + 2)
    if cls is Categorical:
        assert lik.num_params == 16


@pytest.mark.parametrize("shape", [(12,), (2, 3, 4)])
def test_prepared_data_score_as_the_data(shape):
    """The IW bound scores ``likelihood.prepare(x)`` once for all importance samples: for Bernoulli the signs
    1 - 2x with log p = -softplus(s l); every model gives log_prob(x) back."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((5, *shape), 0.5))
    for lik in (Bernoulli(shape), Categorical(shape, num_classes=2)):
        d = lik(torch.randn(5, lik.num_params, *lik.spatial))
        assert torch.allclose(d.log_prob_prepared(lik.prepare(x)), d.log_prob(x), atol=1e-5)
    assert torch.equal(Bernoulli(shape).prepare(x), (1 - 2 * x).reshape(5, *((1,) if len(shape) == 1 else ()), *shape))


@pytest.mark.parametrize("d", [784, 64, 67])
def test_grouped_softplus_sum_matches_float64(d):
    """The compiled IW bound sums softplus as sum relu(y) + sum log prod(1 + e^-|y|) over groups: against
    float64 softplus, to float32 rounding, for logits from 1e-3 to 80 in size (a prime width above 64: softplus)."""
    torch.manual_seed(0)
    y = torch.randn(50, d) * torch.logspace(-3, math.log10(80), d)
    want = F.softplus(y.double()).sum(1)
    for grouped in (False, True):
        got = sum_softplus(y, grouped=grouped)
        assert got.dtype == torch.float32 and got.shape == (50,)
        assert torch.allclose(got.double(), want, rtol=2e-6, atol=1e-4), grouped
    # the most factors up to 64, for products that fill vectors of 16: 784 = 49 x 16, 3072 = 64 x 48
    assert [_softplus_groups(d) for d in (784, 3072, 64, 96, 37, 67)] == [49, 64, 4, 6, 37, 1]
    # one wide row that a product over all of it would overflow: groups keep every product finite
    wide = torch.full((1, 3072), -60.0)
    assert torch.isfinite(sum_softplus(wide, grouped=True)).all()
    assert torch.allclose(sum_softplus(-wide, grouped=True).double(), F.softplus(-wide.double()).sum(1), rtol=1e-6)


def test_grouped_softplus_sum_is_what_a_compiled_bernoulli_bound_uses():
    torch.manual_seed(0)
    lik = Bernoulli((784,))
    logits, x = torch.randn(6, 1, 784) * 5, torch.bernoulli(torch.full((6, 784), 0.3))
    signs = lik.prepare(x)
    compiled = torch.compile(lambda l, s: lik(l).log_prob_prepared(s), fullgraph=True)
    try:
        got = compiled(logits, signs)
    except torch._dynamo.exc.Unsupported:  # a graph break in the term: a defect, not the machine
        raise
    except Exception as e:  # no C++ compiler or Python headers: what the model's own fallback would meet
        pytest.skip(f"torch.compile is not available here: {e}")
    eager = lik(logits).log_prob_prepared(signs)
    assert torch.allclose(got, sum_softplus(logits * signs, grouped=True).neg(), atol=1e-4)
    assert torch.allclose(got, eager, atol=2e-4)


def test_a_distribution_missing_a_layout_method_names_it_and_keeps_the_ones_it_has():
    class MeanOnly(ObservationDistribution):  # an observation distribution that cannot sample
        def _mean_layout(self):
            return torch.full((2, 1, 4), 0.25)

    d = MeanOnly(Bernoulli((4,)))
    assert torch.equal(d.mean, torch.full((2, 4), 0.25))  # (B, 1, D) -> (B, D)
    assert torch.equal(d.mode_layout(), torch.full((2, 1, 4), 0.25))
    with pytest.raises(NotImplementedError, match="MeanOnly defines no _sample_layout"):
        d.sample()
    with pytest.raises(NotImplementedError, match="MeanOnly defines no _log_prob_layout"):
        d.log_prob(torch.zeros(2, 4))
