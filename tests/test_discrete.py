"""Discrete latents: categorical and Bernoulli layers (Gumbel-softmax / Concrete in training, exact in
evaluation), vector-quantised layers, and hierarchies that mix them with Gaussian ones."""

import functools
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import hvae
from hvae.distributions import BernoulliLatent, Categorical, kl_divergence
from hvae.evaluate import evaluate, format_table
from hvae.layers import latent_channels
from hvae.quantize import CodePrior, VQFamily, VQPosterior, perplexity

B = 6


def _logits(*shape, seed=0, scale=2.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _mixed(inference="ladder", seed=0, **overrides):
    """A small MLP hierarchy with one level of every type (bottom to top: gaussian, categorical,
    bernoulli, vq)."""
    base = dict(
        data_shape=[12],
        latent_dims=[4, 3, 5, 2],
        hidden_dims=[16, 16, 12, 8],
        depth=1,
        inference=inference,
        latent_types=["gaussian", "categorical", "bernoulli", "vq"],
        categorical_classes=4,
        vq={"codes": 8, "dim": 3},
    )
    torch.manual_seed(seed)
    return hvae.build_model(hvae.ModelConfig.from_dict({**base, **overrides}))


def _x(n=B, d=12, seed=1):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed)).round()


def _is_one_hot(z, k):
    g = z.reshape(z.shape[0], -1, k)
    return bool(((g == 0) | (g == 1)).all() and (g.sum(-1) == 1).all())


# --- distributions -----------------------------------------------------------------------------------


def test_categorical_kl_matches_brute_force_summation_over_classes():
    G, K = 3, 5
    q = Categorical(_logits(4, G * K, seed=0), K)
    p = Categorical(_logits(4, G * K, seed=1), K)
    brute = torch.zeros(4, G, dtype=torch.float64)
    for k in range(K):
        z = F.one_hot(torch.full((4, G), k), K).double().view(4, G * K)  # class k in every group
        log_q, log_p = q.log_prob(z), p.log_prob(z)
        brute += log_q.exp() * (log_q - log_p)
    assert torch.allclose(kl_divergence(q, p), brute)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=q._grouped), torch.distributions.Categorical(logits=p._grouped)
    )
    assert torch.allclose(kl_divergence(q, p), ref)
    assert (kl_divergence(q, p) >= 0).all() and torch.allclose(kl_divergence(q, q), torch.zeros(4, G).double())


def test_categorical_accepts_grouped_logits_and_spatial_shapes():
    logits = _logits(2, 3 * 4, 5, 5)  # (B, G*K, H, W)
    flat = Categorical(logits, 4)
    grouped = Categorical(logits.view(2, 3, 4, 5, 5))
    z = flat.sample()
    assert z.shape == (2, 12, 5, 5) and _is_one_hot(z.movedim(1, -1).reshape(-1, 3, 4).permute(0, 1, 2), 4)
    assert torch.allclose(flat.log_prob(z), grouped.log_prob(z.view(2, 3, 4, 5, 5)))
    assert flat.log_prob(z).shape == (2, 3, 5, 5)
    assert torch.allclose(flat.mean.view(2, 3, 4, 5, 5).sum(2), torch.ones(2, 3, 5, 5).double())


def test_bernoulli_kl_matches_brute_force_summation():
    q, p = BernoulliLatent(_logits(4, 7, seed=2)), BernoulliLatent(_logits(4, 7, seed=3))
    brute = sum(
        q.log_prob(torch.full((4, 7), v)).exp()
        * (q.log_prob(torch.full((4, 7), v)) - p.log_prob(torch.full((4, 7), v)))
        for v in (0.0, 1.0)
    )
    assert torch.allclose(kl_divergence(q, p), brute)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Bernoulli(logits=q.logits), torch.distributions.Bernoulli(logits=p.logits)
    )
    assert torch.allclose(kl_divergence(q, p), ref)


def test_hard_samples_follow_the_class_probabilities():
    torch.manual_seed(0)
    q = Categorical(torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(20000, 3).contiguous(), 3)
    freq = q.sample().mean(0)
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015)
    b = BernoulliLatent(torch.full((20000, 1), math.log(0.3 / 0.7)))
    assert abs(b.sample().mean().item() - 0.3) < 0.015
    # temperature 0 is the mode
    assert torch.equal(q.rsample(0.0)[0], torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_relaxed_samples_approach_hard_samples_as_the_temperature_goes_to_zero(kind):
    logits = _logits(2000, 4 * 3, seed=4).float()
    gaps = []
    for tau in (2.0, 0.5, 0.1, 0.01):
        torch.manual_seed(0)
        if kind == "categorical":
            z = Categorical(logits, 3, tau=tau, relaxed=True).rsample().view(-1, 3)
            gaps.append((1 - z.max(-1).values).mean().item())  # distance from the nearest vertex
        else:
            z = BernoulliLatent(logits, tau=tau, relaxed=True).rsample()
            gaps.append(torch.minimum(z, 1 - z).mean().item())
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.01
    # the same noise: the relaxed sample's nearest vertex is the hard sample
    torch.manual_seed(0)
    hard = (Categorical(logits, 3) if kind == "categorical" else BernoulliLatent(logits)).rsample()
    assert torch.allclose(z.view_as(hard).round(), hard)


@pytest.mark.parametrize("straight_through", [False, True])
@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_gradients_reach_the_logits_and_straight_through_is_hard_forward(kind, straight_through):
    logits = _logits(8, 6, seed=5).float().requires_grad_()
    dist = (
        Categorical(logits, 3, tau=0.5, relaxed=True, straight_through=straight_through)
        if kind == "categorical"
        else BernoulliLatent(logits, tau=0.5, relaxed=True, straight_through=straight_through)
    )
    z = dist.rsample()
    (z * torch.arange(6.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    is_hard = bool(((z == 0) | (z == 1)).all())
    assert is_hard == straight_through


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_ladder_merge_of_discrete_latents_is_the_normalised_product(kind):
    a, b = _logits(5, 8, seed=6), _logits(5, 8, seed=7)
    if kind == "categorical":
        qa, qb = Categorical(a, 4), Categorical(b, 4)
        prod = qa.probs * qb.probs
        expected = prod / prod.sum(2, keepdim=True)
        assert torch.allclose(qa.merge(qb).probs, expected)
    else:
        qa, qb = BernoulliLatent(a), BernoulliLatent(b)
        on, off = qa.probs * qb.probs, (1 - qa.probs) * (1 - qb.probs)
        assert torch.allclose(qa.merge(qb).probs, on / (on + off))


# --- configs and shapes -------------------------------------------------------------------------------


def test_latent_types_are_validated_where_they_enter():
    with pytest.raises(hvae.ConfigError, match="latent_types: needs one type per latent layer"):
        hvae.ModelConfig(latent_dims=[4, 2], hidden_dims=[8, 8], latent_types=["categorical"])
    with pytest.raises(hvae.ConfigError, match=r"latent_types: .*'gaussian' \| 'categorical' \| 'bernoulli' \| 'vq'"):
        hvae.ModelConfig.from_dict(dict(latent_dims=[4, 2], hidden_dims=[8, 8], latent_types=["vq", "dirichlet"]))
    with pytest.raises(hvae.ConfigError, match=r"gumbel\.temperature: must be > 0, got 0\.0"):
        hvae.ModelConfig(gumbel={"temperature": 0.0})
    with pytest.raises(hvae.ConfigError, match=r"vq\.decay: must be in \(0, 1\)"):
        hvae.ModelConfig(vq={"decay": 1.0})


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_discrete_latents_have_group_times_class_channels(inference):
    model = _mixed(inference).eval()
    x = _x()
    zs = model.encode(x)
    assert [tuple(z.shape) for z in zs] == [(B, 4), (B, 3 * 4), (B, 5), (B, 2 * 3)]
    assert [latent_channels(model.config, l) for l in range(4)] == [
        layer.family.channels(d) for layer, d in zip(model.layers, model.config.latent_dims)
    ]
    assert _is_one_hot(zs[1], 4) and bool(((zs[2] == 0) | (zs[2] == 1)).all())
    out = model(x)
    assert [k.shape for k in out.kl] == [(B,)] * 4 and torch.isfinite(out.elbo).all()
    assert model.decode(zs).mean.shape == (B, 12) and model.sample(3).shape == (3, 12)


def test_conv_hierarchies_take_discrete_spatial_latents():
    torch.manual_seed(0)
    cfg = hvae.presets.conv_small(latent_dims=[2, 1], latent_types=["categorical", "vq"], categorical_classes=3)
    model = hvae.build_model(cfg.replace(vq={"codes": 8, "dim": 4}))
    x = torch.rand(B, 1, 8, 8).round()
    model(x).loss.backward()
    model.eval()
    zs = model.encode(x)
    assert [tuple(z.shape) for z in zs] == [(B, 6, 4, 4), (B, 4, 2, 2)]
    assert torch.isfinite(model.log_likelihood(x, num_samples=4)).all()


# --- training versus evaluation ------------------------------------------------------------------------


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_eval_mode_uses_hard_samples_and_is_reproducible(inference):
    model = _mixed(inference)
    x = _x()
    model.train()
    relaxed = model(x).zs
    assert not _is_one_hot(relaxed[1], 4)  # Gumbel-softmax samples feed the networks while training
    with torch.no_grad():
        assert _is_one_hot(model(x).zs[1], 4)  # no gradients: hard
    model.eval()
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    b = model(x)
    assert torch.equal(a.elbo, b.elbo)
    assert _is_one_hot(a.zs[1], 4) and bool(((a.zs[2] == 0) | (a.zs[2] == 1)).all())
    # the eval ELBO's terms are exact log-probabilities of the hard sample
    torch.manual_seed(4)
    run = model._infer(x)
    assert _is_one_hot(run.zs[1], 4)
    assert torch.isfinite(model._log_weights(x, run)).all()


def test_straight_through_feeds_hard_samples_while_training():
    model = _mixed(straight_through=True).train()
    out = model(_x())
    assert _is_one_hot(out.zs[1], 4) and bool(((out.zs[2] == 0) | (out.zs[2] == 1)).all())
    out.loss.backward()
    assert model.layers[1].posterior_head.weight.grad.abs().sum() > 0


def test_gumbel_temperature_anneals_geometrically_with_step():
    model = _mixed(gumbel={"temperature_start": 2.0, "temperature": 0.5, "anneal_steps": 10})
    temps = []
    for s in (0, 5, 10, 50):
        model.step.fill_(s)
        temps.append(float(model.gumbel_temperature()))
    assert temps == pytest.approx([2.0, 1.0, 0.5, 0.5])
    assert _mixed(gumbel={"temperature": 0.7}).gumbel_temperature() == 0.7


@pytest.mark.parametrize(
    "case",
    [
        dict(inference="ladder"),
        dict(inference="top_down"),
        dict(inference="bottom_up"),
        dict(inference="ladder", generative_skip=True, straight_through=True),
        dict(inference="top_down", residual_posterior=True, generative_skip=True),
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_gradients_reach_every_parameter_of_a_mixed_hierarchy(case):
    model = _mixed(**case).train()
    if model.config.residual_posterior:
        with torch.no_grad():  # the residual heads start at zero; move them off it (as in test_model)
            for layer in model.layers[:-1]:
                layer.posterior_head.weight.normal_(0, 0.1)
    model(_x()).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


# --- a hierarchy small enough to enumerate -------------------------------------------------------------


def _enumerable(inference):
    """Two levels of one categorical variable with 3 classes each, 5 binary pixels: 9 configurations."""
    cfg = hvae.ModelConfig(
        data_shape=[5],
        latent_dims=[1, 1],
        hidden_dims=[8, 8],
        depth=1,
        batch_norm=False,
        inference=inference,
        latent_types=["categorical", "categorical"],
        categorical_classes=3,
        likelihood="bernoulli",
    )
    torch.manual_seed(0)
    model = hvae.build_model(cfg)
    with torch.no_grad():  # sharper conditionals than at initialisation, so the bounds differ visibly
        for name, p in model.named_parameters():
            if "prior_head" in name or "decoder_head" in name:
                p.mul_(4.0)
    return model.eval()


def _exact_log_px(model, x):
    """log p(x) = log sum_{z_2, z_1} p(z_2) p(z_1 | z_2) p(x | z_1), over all 9 configurations."""
    B = x.shape[0]
    eye = torch.eye(3)
    terms = []
    with torch.no_grad():
        for k2, k1 in itertools.product(range(3), range(3)):
            z2, z1 = eye[k2].expand(B, 3), eye[k1].expand(B, 3)
            p2, _ = model.layers[1].prior(None, B)
            p1, _ = model.layers[0].prior(model.layers[1].transition(z2, None), B)
            log_joint = p2.log_prob(z2).sum(1) + p1.log_prob(z1).sum(1) + model.decode([z1, z2]).log_prob(x)
            terms.append(log_joint)
    return torch.logsumexp(torch.stack(terms), 0)


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_elbo_stays_below_and_iw_bound_reaches_the_exact_log_px(inference):
    model = _enumerable(inference)
    x = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float32)
    exact = _exact_log_px(model, x)
    assert torch.allclose(
        torch.logsumexp(torch.stack([_exact_log_px(model, v.expand(1, 5)) for v in _all_x()]), 0),
        torch.zeros(1),
        atol=1e-5,
    )  # p(x) sums to one over all 32 images
    torch.manual_seed(0)
    n = 4000
    elbo = model(x.repeat(n, 1), beta=1.0).elbo.view(n, -1)
    assert (elbo.mean(0) < exact - 0.01).all(), (elbo.mean(0), exact)
    iw_1 = model.log_likelihood(x.repeat(n, 1), num_samples=1).view(n, -1).mean(0)
    assert torch.allclose(iw_1, elbo.mean(0), atol=0.1)  # K = 1 is the ELBO
    reps = model.log_likelihood(x.repeat(5, 1), num_samples=2000).view(5, -1)
    se = reps.std(0) / math.sqrt(len(reps))
    gap_k = exact - reps.mean(0)
    assert (gap_k.abs() < 4 * se + 0.01).all(), (gap_k, se)
    assert (gap_k < 0.2 * (exact - elbo.mean(0)) + 0.005).all()


def _all_x():
    return [torch.tensor(bits, dtype=torch.float32) for bits in itertools.product([0.0, 1.0], repeat=5)]


def test_eval_elbo_of_the_enumerable_model_is_the_exact_expectation():
    """Ladder: ELBO = sum_{z_2} q(z_2|x) [log p(z_2) - log q(z_2|x) + sum_{z_1} q(z_1|z_2,x)
    (log p(z_1|z_2) + log p(x|z_1) - log q(z_1|z_2,x))]; the model's eval ELBO is unbiased for it."""
    model = _enumerable("ladder")
    x = torch.tensor([[1, 0, 1, 1, 0]], dtype=torch.float32)
    eye = torch.eye(3)
    with torch.no_grad():
        ctxs = model._bottom_up(x)
        p2, _ = model.layers[1].prior(None, 1)
        q2 = model.layers[1].posterior(ctxs[1], p2, None)
        exact_elbo = 0.0
        for k2 in range(3):
            z2 = eye[k2].view(1, 3)
            p1, h = model.layers[0].prior(model.layers[1].transition(z2, None), 1)
            q1 = model.layers[0].posterior(ctxs[0], p1, h)
            inner = sum(
                q1.log_prob(eye[k1].view(1, 3)).exp()
                * (
                    p1.log_prob(eye[k1].view(1, 3))
                    + model.decode([eye[k1].view(1, 3), z2]).log_prob(x)
                    - q1.log_prob(eye[k1].view(1, 3))
                )
                for k1 in range(3)
            )
            exact_elbo = exact_elbo + q2.log_prob(z2).exp() * (p2.log_prob(z2) - q2.log_prob(z2) + inner)
    torch.manual_seed(1)
    n = 20000
    elbo = model(x.repeat(n, 1), beta=1.0).elbo
    se = elbo.std() / math.sqrt(n)
    assert abs(elbo.mean() - exact_elbo.squeeze()) < 4 * se + 1e-4


# --- vector quantisation ------------------------------------------------------------------------------


def _vq_family(**kw):
    torch.manual_seed(0)
    fam = VQFamily(4, 2, **{"decay": 0.9, "dead_threshold": 0.0, **kw})
    fam.initialised.fill_(True)
    return fam.train()


def test_vq_posterior_is_the_nearest_code_with_a_straight_through_gradient():
    fam = _vq_family()
    e = torch.randn(5, 3 * 2, requires_grad=True)  # 3 groups of 2-dimensional vectors
    with torch.no_grad():
        q = fam.eval().from_raw(e)
    vecs = e.detach().view(5, 3, 1, 2)
    expected = ((vecs - fam.codebook) ** 2).sum(-1).argmin(-1)
    assert torch.equal(q.index, expected)
    assert torch.equal(q.z_q.view(5, 3, 2), fam.codebook[expected])
    fam.eval()
    q = fam.from_raw(e)
    z = q.rsample()
    assert torch.allclose(z, q.z_q)
    z.sum().backward()
    assert torch.equal(e.grad, torch.ones_like(e))  # straight-through: identity gradient to e
    assert torch.equal(q.log_prob(q.sample()), torch.zeros(5, 3))
    assert torch.allclose(q.aux_loss, 0.25 * (e.detach() - q.z_q).pow(2).sum(1))


def test_vq_ema_moves_codes_toward_their_assigned_encoder_outputs():
    fam = _vq_family()
    old = fam.codebook.clone()
    e = torch.randn(64, 2) * 0.5 + 1.0
    with torch.enable_grad():
        q = fam.from_raw(e)
    used = q.code_counts() > 0
    assert used.any()
    for k in used.nonzero().flatten().tolist():
        target = e[q.index.flatten() == k].mean(0)
        assert (fam.codebook[k] - target).norm() < (old[k] - target).norm()
    # the update is EMA of sums over EMA of (Laplace-smoothed) counts
    counts = q.code_counts().float()
    ema_count = 0.9 * 1.0 + 0.1 * counts
    sums = torch.zeros(4, 2).index_add_(0, q.index.flatten(), e)
    ema_sum = 0.9 * old + 0.1 * sums
    n = ema_count.sum()
    smoothed = (ema_count + 1e-5) / (n + 4e-5) * n
    assert torch.allclose(fam.codebook, ema_sum / smoothed[:, None], atol=1e-6)
    # the posterior of this pass keeps the codebook it was quantised with
    assert torch.equal(q.codebook, old)


def test_vq_restarts_dead_codes_at_encoder_outputs_and_initialises_from_data():
    fam = _vq_family(dead_threshold=0.5)
    fam.ema_count.copy_(torch.tensor([10.0, 10.0, 10.0, 0.0]))  # code 3 has fallen out of use
    e = torch.randn(32, 2) + 5.0  # far from every initial code
    with torch.enable_grad():
        fam.from_raw(e)
    assert (fam.codebook[3] == e).all(1).any()  # restarted at one of the encoder outputs
    assert fam.ema_count[3] > 0
    fresh = VQFamily(4, 2).train()  # before its first training pass every code is restarted
    with torch.enable_grad():
        fresh.from_raw(e)
    assert all((code == e).all(1).any() for code in fresh.codebook)
    assert fresh.initialised


def test_vq_kl_is_minus_log_prior_of_the_chosen_code():
    fam = _vq_family().eval()
    e = torch.randn(5, 3 * 2)
    q = fam.from_raw(e)
    logits = torch.randn(5, 3 * 4)
    p = fam.prior_from_raw(logits)
    assert isinstance(q, VQPosterior) and isinstance(p, CodePrior)
    log_p = F.log_softmax(logits.view(5, 3, 4), -1).gather(-1, q.index.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(kl_divergence(q, p), -log_p)
    assert torch.allclose(p.log_prob(q.sample()), log_p)
    assert torch.allclose(q.log_prob(q.sample()) - p.log_prob(q.sample()), kl_divergence(q, p))


def test_stacked_vq_training_kl_reads_the_code_q_chose_after_the_codebook_moves():
    # bottom_up: q(z_l | z_{l-1}) runs first and its training pass moves (here: restarts) the codebook; the
    # priors are built after that and would read z back to the nearest *new* code
    torch.manual_seed(0)
    cfg = hvae.ModelConfig(
        data_shape=[10], latent_dims=[2, 2, 2], hidden_dims=[8, 8, 8], inference="bottom_up",
        latent_types=["vq"] * 3, vq={"codes": 8, "dim": 2},
    )  # fmt: skip
    model = hvae.build_model(cfg).train()
    before = [layer.family.codebook.clone() for layer in model.layers]
    runs = []
    kl_terms = model._kl_terms
    model._kl_terms = lambda run: runs.append(run) or kl_terms(run)
    out = model(_x(d=10))
    assert any(not torch.equal(b, layer.family.codebook) for b, layer in zip(before, model.layers))
    (run,) = runs
    for l in range(3):
        q, p = run.qs[l], run.ps[l]
        log_p = F.log_softmax(p.logits.view(B, 2, 8), -1).gather(-1, q.index.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(out.kl[l], -log_p.sum(1))


def test_vq_top_level_with_a_uniform_prior_has_kl_g_log_k():
    model = _mixed(vq={"codes": 8, "dim": 3, "top_prior": "uniform"}).eval()
    out = model(_x())
    assert torch.allclose(out.kl[3], torch.full((B,), 2 * math.log(8)))
    learned = _mixed().eval()
    assert learned.layers[3].family.top_logits is not None


def test_codebook_perplexity_is_reported():
    assert perplexity(torch.tensor([5, 5, 5, 5])).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([0, 7, 0, 0])).item() == pytest.approx(1.0)
    model = _mixed().train()
    out = model(_x())
    assert set(out.aux["perplexity"]) == {3} and 1.0 <= out.aux["perplexity"][3] <= 8.0
    assert out.aux["commitment"][3] > 0
    result = evaluate(model, _x(20, seed=2), num_samples=3, batch_size=10)
    cp = result["codebook_perplexity"]
    assert cp[:3] == [None, None, None] and 1.0 <= cp[3] <= 8.0
    assert "codebook perplexity" in format_table({**result, "split": "test"})
    assert "codebook_perplexity" not in evaluate(_model_plain(), _x(10), num_samples=2, batch_size=10)


def _model_plain():
    torch.manual_seed(0)
    return hvae.build_model(hvae.ModelConfig(data_shape=[12], latent_dims=[3, 2], hidden_dims=[8, 8], depth=1))


def test_commitment_loss_enters_the_loss_but_not_the_elbo():
    model = _mixed().eval()
    x = _x()
    twin = hvae.build_model(model.config.replace(vq={"commitment": 0.0}))
    twin.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    out = model(x, beta=1.0)
    torch.manual_seed(0)
    other = twin.eval()(x, beta=1.0)
    assert torch.equal(out.elbo, other.elbo)
    assert torch.allclose(out.loss - other.loss, out.aux["commitment"][3])


# --- presets, training, files -------------------------------------------------------------------------


@functools.cache
def _digits(n=64):
    from hvae.data.sources import read_digits

    x = torch.as_tensor(read_digits().x[:n], dtype=torch.float32).reshape(n, -1)
    return (x > 0.5).float()


def test_lvae_discrete_presets_mix_categorical_and_gaussian_levels():
    cfg = hvae.presets.lvae_discrete()
    assert cfg.data_shape == [784] and set(cfg.latent_types) == {"gaussian", "categorical"}
    assert hvae.presets.get("lvae_discrete_small").latent_types[1] == "categorical"
    from hvae.runconfig import load_run_config

    run = load_run_config("configs/lvae_discrete.yaml")[0]
    assert run.model.latent_types == cfg.latent_types and run.data.binarize == "dynamic"


@pytest.mark.parametrize("types", [None, ["gaussian", "categorical", "vq"]], ids=["preset", "with-vq"])
def test_small_mixed_preset_trains_and_round_trips_through_files(tmp_path, types):
    torch.manual_seed(0)
    overrides = {} if types is None else dict(latent_types=types, vq={"codes": 16, "dim": 4})
    model = hvae.build_model(hvae.presets.lvae_discrete_small(**overrides)).train()
    opt = hvae.make_optimizer(model, lr=1e-2)
    x = _digits()
    losses = []
    for _ in range(8):
        opt.zero_grad()
        out = model(x)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    model.eval()
    model.save_pretrained(tmp_path / "m")
    loaded = hvae.load(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    for fn in (lambda m: m(x).elbo, lambda m: m.log_likelihood(x[:8], num_samples=4), lambda m: m.sample(3)):
        torch.manual_seed(11)
        a = fn(model)
        torch.manual_seed(11)
        assert torch.equal(a, fn(loaded))


def test_sampling_discrete_priors_gives_hard_latents_and_temperature_zero_is_deterministic():
    model = _mixed().eval()
    assert torch.equal(model.sample(4, temperature=0), model.sample(4, temperature=0))
    run = model._top_down(4, temperatures=[1.0] * 4)
    assert _is_one_hot(run.zs[1], 4) and bool(((run.zs[2] == 0) | (run.zs[2] == 1)).all())
    codes = model.layers[3].family.codebook
    assert (run.zs[3].view(4, 2, 1, 3) == codes).all(-1).any(-1).all()  # VQ samples are code vectors


def test_the_pipeline_trains_evaluates_samples_and_reports_a_model_with_discrete_levels(tmp_path, capsys):
    import json

    from hvae.cli import main

    out = tmp_path / "run"
    overrides = [
        "model.preset=lvae_discrete_small",
        "model.latent_types=[gaussian,categorical,vq]",
        "model.vq.codes=16",
        "model.vq.dim=4",
        "data.max_examples=200",
        "train.epochs=1",
        "train.batch_size=32",
        "eval.num_samples=4",
    ]
    assert main(["train", "--config", "configs/default.yaml", *overrides, "--out", str(out), "--quiet"]) == 0
    assert main(["eval", str(out), "--num-samples", "8", "--max-examples", "40"]) == 0
    assert "z_3 codebook perplexity" in capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    assert result["codebook_perplexity"][:2] == [None, None] and 1.0 <= result["codebook_perplexity"][2] <= 16
    assert math.isfinite(result["iw_bound"]) and result["iw_bound"] >= result["elbo"] - 1.0
    assert main(["sample", str(out), "--out", str(tmp_path / "s.png")]) == 0
    assert main(["report", str(out)]) == 0


def test_codes_are_chosen_in_float32_under_autocast_and_counted_without_bincount():
    from hvae.quantize import _counts, code_indices

    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(64, 8, generator=g) * 0.1 + 1.0  # close codes: bf16 distances would tie or flip
    z = (torch.randn(4000, 8, generator=g) * 0.1 + 1.0).reshape(500, 64)  # 8 groups of 8 per row
    want = code_indices(z, codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(code_indices(z, codebook), want)
    assert torch.equal(_counts(want, 64), torch.bincount(want.flatten(), minlength=64).float())
