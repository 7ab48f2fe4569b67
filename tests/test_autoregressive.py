"""Autoregressive observation models: causality, normalisation, sampler = scorer, and the model API."""

import itertools
import math

import pytest
import torch

import hvae
from hvae.configbase import merge
from hvae.likelihoods import Autoregressive, build_likelihood

B = 3


def _cfg(decoder="pixelcnn", data_shape=(1, 4, 4), likelihood="bernoulli", **overrides):
    base = dict(
        data_shape=list(data_shape),
        latent_dims=[3, 2],
        hidden_dims=[8, 8],
        depth=1,
        decoder=decoder,
        likelihood=likelihood,
        ar_cond_channels=3,
        pixelcnn={"layers": 2, "channels": 8, "kernel": 3},
        seq_layers=2,
        seq_width=8,
        seq_heads=2,
        num_classes=3,
        num_mixtures=2,
        num_bits=3,
    )
    return hvae.ModelConfig.from_dict(merge(base, overrides))


def _lik(seed=0, **kw) -> Autoregressive:
    torch.manual_seed(seed)
    lik = build_likelihood(_cfg(**kw)).double()
    assert isinstance(lik, Autoregressive)
    for blk in getattr(lik.net, "blocks", []):
        if blk.cond is not None:  # zero when built: random here, so that the tests exercise the path
            torch.nn.init.normal_(blk.cond.weight, std=0.5)
    return lik


def _cond(lik, batch=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, lik.num_params, *lik.spatial, generator=g, dtype=torch.float64)


def _data(lik, batch=B, seed=2):
    """Random data on the levels of the base model, in channel layout (B, C, *spatial)."""
    g = torch.Generator().manual_seed(seed)
    levels = lik.levels
    k = torch.randint(0, levels, (batch, lik.channels, *lik.spatial), generator=g)
    return k.double() / (levels - 1)


# every decoder with each output distribution it supports
_KINDS = [
    dict(decoder="pixelcnn", data_shape=(1, 4, 5), likelihood="bernoulli"),
    dict(decoder="pixelcnn", data_shape=(1, 7, 3), likelihood="categorical"),  # taller than the reach
    dict(decoder="pixelcnn", data_shape=(3, 3, 4), likelihood="discretized_logistic_mixture"),
    dict(decoder="transformer", data_shape=(7,), likelihood="categorical"),
    dict(decoder="transformer", data_shape=(1, 2, 3), likelihood="bernoulli"),
    dict(decoder="gru", data_shape=(1, 7), likelihood="categorical"),
    dict(decoder="gru", data_shape=(6,), likelihood="bernoulli"),
    dict(decoder="transformer", data_shape=(9,), likelihood="categorical", seq_context=3),
    dict(decoder="transformer", data_shape=(8,), likelihood="categorical", seq_cond_every_layer=True),
]
_IDS = [
    f"{k['decoder']}-{k['likelihood']}-{'x'.join(map(str, k['data_shape']))}"
    + ("-window" if "seq_context" in k else "")
    + ("-cond-every-layer" if "seq_cond_every_layer" in k else "")
    for k in _KINDS
]
# pixelcnns whose head orders the channels of a pixel: p(x_i) = ∏_c p(x_i^c | x_i^<c, x_<i, c)
_ORDERED = [
    dict(decoder="pixelcnn", data_shape=(2, 3, 4), likelihood="bernoulli"),
    dict(decoder="pixelcnn", data_shape=(3, 3, 3), likelihood="categorical"),
]
_ORDERED_IDS = [f"{k['likelihood']}-{'x'.join(map(str, k['data_shape']))}" for k in _ORDERED]


@pytest.mark.parametrize("kind", _KINDS, ids=_IDS)
def test_changing_x_j_changes_no_output_at_positions_up_to_j(kind):
    lik = _lik(**kind)
    cond, x = _cond(lik), _data(lik)
    T = math.prod(lik.spatial)
    base = lik.net(x, cond).flatten(2)  # (B, P, T)
    later_moved = False
    for j in range(T):
        y = x.clone()
        y.flatten(2)[:, :, j] = 1 - y.flatten(2)[:, :, j]  # every channel of position j
        out = lik.net(y, cond).flatten(2)
        assert torch.equal(out[:, :, : j + 1], base[:, :, : j + 1]), f"position <= {j} read x_{j}"
        later_moved |= not torch.allclose(out[:, :, j + 1 :], base[:, :, j + 1 :])
    assert later_moved  # the outputs do depend on the earlier positions


def test_pixelcnn_sees_above_and_left_without_a_blind_spot_and_its_receptive_field_is_bounded():
    lik = _lik(data_shape=(1, 7, 7), pixelcnn={"layers": 2, "kernel": 3})
    cond, x = _cond(lik, batch=1), _data(lik, batch=1)
    base = lik.net(x, cond)[0, 0]
    dst = (4, 3)

    def reads(src):
        y = x.clone()
        y[0, 0, src[0], src[1]] = 1 - y[0, 0, src[0], src[1]]
        return not torch.allclose(lik.net(y, cond)[0, 0][dst], base[dst])

    # the pixel above-right lies in the blind spot of a single masked-convolution stack
    assert reads((3, 4)) and reads((3, 3)) and reads((4, 2))
    # L layers of k x k kernels (r = k // 2) reach L r + 1 rows up and columns left, L r columns right
    assert reads((1, 3)) and reads((4, 0)) and reads((2, 5))
    assert not reads((0, 3)) and not reads((3, 6)) and not reads((1, 0))


@pytest.mark.parametrize("kind", _KINDS + _ORDERED, ids=_IDS + [f"ordered-{i}" for i in _ORDERED_IDS])
def test_sequential_samples_scored_by_the_teacher_forced_pass_give_the_samplers_log_probability(kind):
    """Also where the net orders the channels of a pixel (the sampler fills them one by one)."""
    lik = _lik(**kind)
    dist = lik(_cond(lik))
    torch.manual_seed(3)
    x = dist.sample()
    assert x.shape == (B, *lik.data_shape)
    assert torch.allclose(dist.log_prob(x), dist.sample_log_prob, atol=1e-9)
    lik.check_support(x)


@pytest.mark.parametrize(
    "kind",
    [
        dict(decoder="pixelcnn", data_shape=(1, 3, 3)),
        dict(decoder="pixelcnn", data_shape=(1, 2, 5)),
        dict(decoder="transformer", data_shape=(1, 3, 3)),
        dict(decoder="gru", data_shape=(9,)),
    ],
    ids=lambda k: f"{k['decoder']}-{'x'.join(map(str, k['data_shape']))}",
)
def test_probabilities_of_all_binary_images_sum_to_one(kind):
    lik = _lik(**kind)
    D = math.prod(kind["data_shape"])
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)), dtype=torch.float64)
    xs = xs.view(-1, *kind["data_shape"])  # all 2^D images
    for cond in _cond(lik, batch=2):
        log_p = lik(cond.expand(xs.shape[0], *cond.shape)).log_prob(xs)
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)


def test_categorical_and_mixture_outputs_sum_to_one_over_all_values():
    lik = _lik(decoder="transformer", data_shape=(4,), likelihood="categorical")  # 3^4 sequences
    xs = torch.tensor(list(itertools.product(range(3), repeat=4)), dtype=torch.float64) / 2
    log_p = lik(_cond(lik, batch=1).expand(xs.shape[0], -1, -1)).log_prob(xs)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)
    lik = _lik(data_shape=(2, 1, 2), likelihood="discretized_logistic_mixture", num_bits=2)  # 4^4 images
    xs = torch.tensor(list(itertools.product(range(4), repeat=4)), dtype=torch.float64).view(-1, 2, 1, 2) / 3
    log_p = lik(_cond(lik, batch=1).expand(xs.shape[0], -1, -1, -1)).log_prob(xs)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-6)


def test_integer_class_data_and_levels_score_alike():
    lik = _lik(decoder="gru", data_shape=(5,), likelihood="categorical")
    dist = lik(_cond(lik))
    k = torch.randint(0, 3, (B, 5))
    assert torch.allclose(dist.log_prob(k), dist.log_prob(k.double() / 2))


@pytest.mark.parametrize("kind", _KINDS[:4] + _ORDERED, ids=_IDS[:4] + [f"ordered-{i}" for i in _ORDERED_IDS])
def test_mean_is_a_greedy_sequential_pass_within_the_data_range(kind):
    lik = _lik(**kind)
    dist = lik(_cond(lik))
    m = dist.mean
    assert m.shape == (B, *lik.data_shape) and (m >= 0).all() and (m <= 1).all()
    assert torch.equal(m, dist.mean)  # deterministic


# --- channels ordered within a pixel: p(x_i) = ∏_c p(x_i^c | x_i^<c, x_<i, c) ------------------------------


def _by_channel(lik, params):
    """(B, P C, H, W) -> (B, P, C, T): the likelihoods' layout, parameter p of channel c at p C + c."""
    return params.view(params.shape[0], -1, lik.channels, math.prod(lik.spatial))


@pytest.mark.parametrize("kind", _ORDERED, ids=_ORDERED_IDS)
def test_changing_channel_c_of_x_j_changes_no_output_up_to_it_in_raster_then_channel_order(kind):
    lik = _lik(**kind)
    assert lik.orders_channels
    cond, x = _cond(lik), _data(lik)
    C, T = lik.channels, math.prod(lik.spatial)
    base = _by_channel(lik, lik.net(x, cond))
    later_moved = False
    for j in range(T):
        for c in range(C):
            y = x.clone()
            v = y.flatten(2)[:, c, j]
            y.flatten(2)[:, c, j] = torch.where(v > 0.5, 0.0, 1.0)  # another level
            out = _by_channel(lik, lik.net(y, cond))
            assert torch.equal(out[..., :j], base[..., :j]), f"a position before {j} read x_{j}^{c}"
            assert torch.equal(out[:, :, : c + 1, j], base[:, :, : c + 1, j]), f"channel <= {c} read x_{j}^{c}"
            if c + 1 < C:  # the next channel of the same pixel reads it
                assert not torch.allclose(out[:, :, c + 1, j], base[:, :, c + 1, j])
            later_moved |= not torch.allclose(out[..., j + 1 :], base[..., j + 1 :])
    assert later_moved


def test_channel_ordered_probabilities_sum_to_one_over_all_images():
    lik = _lik(data_shape=(2, 2, 2))  # binary: 2^8 images
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)), dtype=torch.float64).view(-1, 2, 2, 2)
    for cond in _cond(lik, batch=2):
        log_p = lik(cond.expand(xs.shape[0], *cond.shape)).log_prob(xs)
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)
    lik = _lik(data_shape=(3, 1, 2), likelihood="categorical")  # 3 classes: 3^6 images
    xs = torch.tensor(list(itertools.product(range(3), repeat=6)), dtype=torch.float64).view(-1, 3, 1, 2) / 2
    log_p = lik(_cond(lik, batch=1).expand(xs.shape[0], -1, -1, -1)).log_prob(xs)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "kind",
    [
        dict(data_shape=(1, 3, 3), likelihood="categorical"),
        dict(data_shape=(3, 3, 3), likelihood="discretized_logistic_mixture"),
    ],
    ids=["one-channel", "mixture"],
)
def test_one_channel_and_mixture_pixelcnns_keep_the_joint_head_and_its_parameter_names(kind):
    lik = _lik(**kind)
    assert not lik.orders_channels
    assert {n for n in lik.net.state_dict() if n.startswith("head.")} == {
        "head.1.weight",
        "head.1.bias",
        "head.3.weight",
        "head.3.bias",
    }


# --- through the model --------------------------------------------------------------------------------


def _model(block="conv", seed=0, **overrides):
    torch.manual_seed(seed)
    extra = dict(block="conv", strides=[2, 2], data_shape=[1, 8, 8]) if block == "conv" else {}
    return hvae.build_model(_cfg(**{**extra, **overrides}))


def _binary(model, n=B, seed=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.data_shape, generator=g).round()


@pytest.mark.parametrize("block", ["mlp", "conv"])
@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_pixelvae_elbo_iw_bound_and_samples_work_through_the_model_api(block, inference):
    model = _model(block, inference=inference, kl="mc")
    x = _binary(model)
    out = model(x)
    assert out.elbo.shape == (B,) and torch.isfinite(out.elbo).all()
    out.loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    model.eval()
    torch.manual_seed(5)
    elbo = model(x).elbo
    torch.manual_seed(5)
    assert torch.allclose(model.log_likelihood(x, num_samples=1), elbo, atol=1e-4)
    assert model.log_likelihood(x, num_samples=4).shape == (B,)
    s = model.sample(2, mean=False)
    assert s.shape == (2, *model.data_shape) and ((s == 0) | (s == 1)).all()
    assert model.sample(2).shape == (2, *model.data_shape)


def test_a_sequence_model_with_a_transformer_decoder_trains_a_step():
    model = _model("mlp", data_shape=[6], decoder="transformer", likelihood="categorical")
    x = torch.randint(0, 3, (B, 6)).float() / 2
    model(x).loss.backward()
    assert all(p.grad is not None for p in model.likelihood.net.parameters())
    assert model.eval().sample(2, mean=False).shape == (2, 6)


def test_an_rgb_pixelvae_with_categorical_outputs_trains_a_step_and_samples():
    model = _model(data_shape=[3, 4, 4], likelihood="categorical", num_classes=4)
    x = torch.randint(0, 4, (B, 3, 4, 4)).float() / 3
    out = model(x)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    head = model.likelihood.net.head
    dead = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    s = model.eval().sample(2, mean=False)
    assert s.shape == (2, 3, 4, 4)
    model.likelihood.check_support(s)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(data_shape=[16]), "pixelcnn models images"),
        (dict(likelihood="gaussian"), "discrete likelihood"),
        (dict(pixelcnn={"kernel": 4}), r"pixelcnn\.kernel: must be odd"),
        (dict(decoder="transformer", likelihood="discretized_logistic_mixture"), "bernoulli or categorical"),
        (dict(decoder="gru", data_shape=[2, 4]), "one channel"),
        (dict(decoder="transformer", data_shape=[6], seq_heads=3), "seq_heads"),
    ],
)
def test_unsupported_decoder_settings_are_refused_naming_the_key(overrides, match):
    with pytest.raises(hvae.ConfigError, match=match):
        _cfg(**overrides)


def test_pixelvae_presets_build_and_the_small_one_trains_a_few_steps(tmp_path):
    from hvae.runconfig import load_run_config
    from hvae.train import train

    cfg = hvae.presets.pixelvae()
    assert cfg.decoder == "pixelcnn" and cfg.data_shape == [1, 28, 28]
    run_cfg, raw = load_run_config(
        None,
        [
            "model.preset=pixelvae_small",
            "data.source=digits",
            "data.flatten=false",
            "data.binarize=dynamic",
            "data.max_examples=64",
            "train.epochs=1",
            "train.batch_size=16",
            "train.progress=false",
            "eval.num_samples=4",
        ],
    )
    out = train(run_cfg, tmp_path / "r", raw=raw, log=lambda m: None)
    model = hvae.load(out / "model")
    assert model.config.decoder == "pixelcnn" and model.step.item() > 0
    assert model.sample(2, mean=False).shape == (2, 1, 8, 8)


def test_under_bf16_autocast_the_decoders_output_is_scored_in_float32():
    lik = _lik(decoder="pixelcnn", data_shape=(1, 4, 4), likelihood="categorical", num_classes=4).float()
    cond, x = _cond(lik).float(), _data(lik)
    dist = lik(cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dist.log_prob(x)
        out = lik.net(dist._net_input(x), cond)
    assert out.dtype == torch.bfloat16 and got.dtype == torch.float32
    assert torch.equal(got, lik.base(out.float()).log_prob(x))  # the bf16 output, widened before any log


def test_a_transformer_with_a_limited_context_reads_only_the_last_positions():
    lik = _lik(decoder="transformer", data_shape=(10,), likelihood="categorical", seq_context=3, seq_layers=1)
    cond, x = _cond(lik), _data(lik)
    base = lik.net(x, cond).flatten(2)  # (B, P, T): position t reads inputs t-2..t, i.e. x_{t-3}..x_{t-1}
    for j in range(10):
        y = x.clone()
        y[:, :, j] = (y[:, :, j] + 0.5) % 1.0
        moved = ~torch.isclose(lik.net(y, cond).flatten(2), base).all(1).all(0)  # (T,)
        assert moved.nonzero().flatten().tolist() == list(range(j + 1, min(j + 4, 10)))


def test_a_transformer_conditioned_at_every_layer_starts_as_one_conditioned_once_then_reads_the_latents_deeper():
    once = _lik(decoder="transformer", data_shape=(8,), likelihood="categorical")
    torch.manual_seed(0)
    every = build_likelihood(
        _cfg(decoder="transformer", data_shape=(8,), likelihood="categorical", seq_cond_every_layer=True)
    )
    every = every.double()
    missing, unexpected = every.load_state_dict(once.state_dict(), strict=False)
    assert sorted(missing) == [f"net.blocks.{i}.cond.{w}" for i in range(2) for w in ("bias", "weight")]
    assert unexpected == []
    cond, x = _cond(once), _data(once)
    assert torch.equal(every.net(x, cond), once.net(x, cond))  # the new projections start at zero
    # the top block's projection alone moves the output, and only through the latents' features
    torch.nn.init.normal_(every.net.blocks[1].cond.weight)
    moved = every.net(x, cond)
    assert not torch.allclose(moved, once.net(x, cond))
    every.net.cond_proj.weight.data.zero_()
    every.net.cond_proj.bias.data.zero_()
    once.net.cond_proj.weight.data.zero_()
    once.net.cond_proj.bias.data.zero_()
    assert torch.allclose(every.net(x, cond), once.net(x, cond))  # no latents' features, no difference


def test_word_dropout_acts_in_training_only():
    lik = _lik(decoder="gru", data_shape=(8,), likelihood="categorical", seq_word_dropout=0.5)
    assert lik.net.embed.num_embeddings == lik.levels + 2  # the dropped-token symbol
    cond, x = _cond(lik), _data(lik)
    lik.eval()
    clean = lik.net(x, cond)
    assert torch.equal(lik.net(x, cond), clean)
    lik.train()
    torch.manual_seed(0)
    noisy = lik.net(x, cond)
    assert not torch.allclose(noisy, clean)
    assert torch.allclose(noisy[..., 0], clean[..., 0])  # the start token is never dropped
    # without word dropout the embedding keeps its old size, so saved models load as before
    assert _lik(decoder="gru", data_shape=(8,), likelihood="categorical").net.embed.num_embeddings == lik.levels + 1


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            dict(decoder="transformer", data_shape=(8,), likelihood="categorical", seq_word_dropout=1.0),
            "seq_word_dropout",
        ),
        (dict(decoder="gru", data_shape=(8,), likelihood="categorical", seq_context=4), "seq_context"),
        (dict(decoder="gru", data_shape=(8,), likelihood="categorical", seq_cond_every_layer=True), "seq_cond_every"),
    ],
)
def test_bad_sequence_decoder_remedies_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**overrides)


def test_decode_options_on_the_three_output_kinds():
    from hvae.decoding import Decoding

    lik = _lik(decoder="pixelcnn", data_shape=(1, 3, 3))  # Bernoulli
    dist = lik(_cond(lik))
    assert torch.equal(dist.decode(Decoding("top_k", top_k=1)), dist.decode(Decoding("greedy")))
    # greedy values are the sequential mean's conditionals rounded (the mean reads the greedy values before it)
    assert torch.equal(dist.decode(Decoding("greedy")), (dist.mean > 0.5).double())
    torch.manual_seed(0)
    x = dist.decode(Decoding("sample", temperature=0.7))
    assert torch.allclose(dist.log_prob(x), dist.sample_log_prob, atol=1e-9)  # scored under p(x | c) itself
    lik = _lik(data_shape=(2, 1, 2), likelihood="discretized_logistic_mixture", num_bits=2)
    dist = lik(_cond(lik))
    x = dist.decode(Decoding("sample"))
    assert torch.allclose(dist.log_prob(x), dist.sample_log_prob, atol=1e-6)
    for bad in (Decoding("top_k"), Decoding("sample", temperature=0.5)):
        with pytest.raises(ValueError, match="discretised logistic mixture decodes with 'sample' or 'greedy'"):
            dist.decode(bad)


def test_the_model_api_takes_decode_for_autoregressive_decoders_only():
    model = _model().eval()
    torch.manual_seed(0)
    a = model.sample(4, decode="greedy", temperature=0.0)
    assert torch.equal(a, model.sample(4, decode="greedy", temperature=0.0))
    assert torch.equal(a, (model.sample(4, temperature=0.0, mean=True) > 0.5).float())
    assert model.generate([None, model.encode(_binary(model))[-1]], decode="top_k").shape == (B, *model.data_shape)
    assert model.sample_conditional(_binary(model), keep_top=1, decode="top_p").shape == (B, *model.data_shape)
    with pytest.raises(ValueError, match="decode must be one of"):
        model.sample(2, decode="beam")
    plain = hvae.build_model(hvae.presets.small()).eval()
    with pytest.raises(ValueError, match="decode= applies to autoregressive decoders"):
        plain.sample(2, decode="sample")


@pytest.mark.parametrize("kind", _KINDS + _ORDERED, ids=_IDS + _ORDERED_IDS)
def test_every_net_says_whether_it_orders_channels_and_only_those_steppers_rerun_the_head(kind):
    from hvae.nets.autoregressive import Stepper

    lik = _lik(**kind)
    cond, x = _cond(lik), _data(lik)
    assert lik.orders_channels is lik.net.orders_channels
    assert lik.orders_channels == (kind in _ORDERED)
    stepper = lik.net.stepper(cond)
    assert isinstance(stepper, Stepper)
    params = stepper.step(x, 0)
    if lik.orders_channels:  # the head rerun on the features the step kept gives the step's parameters
        assert torch.equal(stepper.head(x, 0), params)
    elif kind["decoder"] != "pixelcnn":
        with pytest.raises(NotImplementedError, match="only the stepper of a net that orders_channels"):
            stepper.head(x, 0)


def test_a_pixel_steppers_head_before_any_step_says_to_step_first():
    lik = _lik(**_ORDERED[0])
    with pytest.raises(RuntimeError, match="call step first"):
        lik.net.stepper(_cond(lik)).head(_data(lik), 0)
