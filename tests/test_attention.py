"""Attention: spatial self-attention in the cells, depth-wise attention across the levels (DAVI)."""

import pytest
import torch

import hvae
from hvae.configbase import merge
from hvae.nets.attention import DepthAttention, SpatialSelfAttention

B = 4


def _cfg(block="mlp", **overrides):
    if block == "mlp":
        base = dict(data_shape=[12], latent_dims=[4, 3, 2], hidden_dims=[16, 12, 8], depth=1)
    else:
        base = dict(data_shape=[1, 8, 8], latent_dims=[3, 2, 2], hidden_dims=[8, 8, 8], block="conv", strides=[2, 1, 2])
        base["depth"] = 1
    base.update(attention={"heads": 2, "depth_dim": 8})
    return hvae.ModelConfig.from_dict(merge(base, overrides))


def _model(block="mlp", seed=0, **overrides):
    torch.manual_seed(seed)
    return hvae.build_model(_cfg(block, **overrides))


def _x(model, n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.data_shape, generator=g).round()


# --- spatial self-attention ------------------------------------------------------------------------------


def test_spatial_attention_permutes_its_output_with_its_input_positions():
    torch.manual_seed(0)
    attn = SpatialSelfAttention(8, heads=2).double()
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    perm = torch.randperm(30)

    def permute(t):
        return t.flatten(2)[:, :, perm].view_as(t)

    assert torch.allclose(attn(permute(x)), permute(attn(x)), atol=1e-12)
    assert not torch.allclose(attn(x), x)  # it does something


def test_spatial_attention_mixes_information_across_all_positions():
    torch.manual_seed(0)
    attn = SpatialSelfAttention(4, heads=2)
    x = torch.randn(1, 4, 6, 6)
    y = x.clone()
    y[0, :, 5, 5] += torch.randn(4)  # not a constant across channels: the pre-norm would remove that
    changed = (attn(y) - attn(x)).abs().sum(1)[0]
    assert (changed > 0).all()  # one position moved, every position saw it (a 3x3 conv would not)


@pytest.mark.parametrize("inference", ["ladder", "top_down", "bottom_up"])
def test_attention_levels_wrap_the_bottom_up_and_prior_cells(inference):
    model = _model("conv", attention={"levels": [0, 1]}, inference=inference)
    has = lambda m: any(isinstance(c, SpatialSelfAttention) for c in m.modules())  # noqa: E731
    assert [has(b) for b in model.encoder] == [True, True, False]
    assert has(model.layers[0].prior_net) and has(model.layers[1].prior_net)
    assert not has(model.layers[2]) and not has(model.decoder)


# --- depth-wise attention --------------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["mlp", "conv", "temporal"])
def test_depth_attention_reads_every_memory_state_at_other_resolutions(block):
    torch.manual_seed(0)
    spatial = {"mlp": ((), (), ()), "conv": ((4, 4), (2, 2), (8, 8)), "temporal": ((8,), (4,), (16,))}[block]
    query = torch.randn(2, 5, *spatial[0])
    memory = [torch.randn(2, 3, *spatial[1]), torch.randn(2, 7, *spatial[2])]  # coarser and finer
    attn = DepthAttention(5, [3, 7], dim=8, heads=2)
    out = attn(query, memory)
    assert out.shape == query.shape
    for i in range(2):
        moved = [m.clone() for m in memory]
        moved[i] = moved[i] + torch.randn_like(moved[i])
        assert not torch.allclose(attn(query, moved), out)


def _perturbed(zs, j):
    """zs with level j moved by noise (not by a constant: a per-position norm would cancel that)."""
    zs = list(zs)
    zs[j] = zs[j] + torch.randn_like(zs[j])
    return zs


@pytest.mark.parametrize("block", ["mlp", "conv"])
@pytest.mark.parametrize("skip", [False, True])
def test_depth_attention_prior_never_reads_a_level_not_yet_computed(block, skip):
    """Changing z_j changes no prior p(z_i | ·) with i >= j (those are computed before z_j exists)."""
    model = _model(block, attention={"depth": True}, generative_skip=skip).eval()
    L = model.config.num_layers
    zs = model.encode(_x(model))
    with torch.no_grad():
        base = model._top_down(B, zs_given=zs)
        for j in range(L):
            run = model._top_down(B, zs_given=_perturbed(zs, j))
            for i in range(j, L):
                assert torch.equal(run.ps[i].mu, base.ps[i].mu) and torch.equal(run.ps[i].sigma, base.ps[i].sigma)
            if j > 0:
                assert not torch.allclose(run.ps[j - 1].mu, base.ps[j - 1].mu)


@pytest.mark.parametrize("block", ["mlp", "conv"])
def test_depth_attention_lets_a_prior_read_levels_beyond_the_one_above(block):
    """Without a skip state p(z_1 | z_2) is Markov; depth attention makes it read z_3 directly."""
    zs_of = lambda m: m.encode(_x(m))  # noqa: E731
    for depth_attention, reads_z3 in [(False, False), (True, True)]:
        model = _model(block, attention={"depth": depth_attention}).eval()
        zs = zs_of(model)
        with torch.no_grad():
            a = model._top_down(B, zs_given=zs).ps[0].mu
            b = model._top_down(B, zs_given=_perturbed(zs, 2)).ps[0].mu
        assert (not torch.allclose(a, b)) == reads_z3


@pytest.mark.parametrize("block", ["mlp", "conv"])
def test_depth_attention_bottom_up_context_never_reads_a_level_above(block):
    """Perturb the bottom-up features of level j with a hook: the contexts of levels below j do not move."""
    model = _model(block, attention={"depth": True}).eval()
    x = _x(model)
    with torch.no_grad():
        base = model._bottom_up(x)
        for j in range(model.config.num_layers):
            handle = model.encoder[j].register_forward_hook(lambda mod, inp, out: out + torch.randn_like(out))
            try:
                ctxs = model._bottom_up(x)
            finally:
                handle.remove()
            for i in range(j):
                assert torch.equal(ctxs[i], base[i])
            assert not torch.allclose(ctxs[j], base[j])


@pytest.mark.parametrize("block", ["mlp", "conv"])
def test_stacked_vae_upward_pass_never_reads_a_level_above(block):
    model = _model(block, attention={"depth": True}, inference="bottom_up").eval()
    x = _x(model)
    with torch.no_grad():
        base = model._infer(x, posterior_mean=True).qs
        for j in range(1, model.config.num_layers):
            handle = model.encoder[j].register_forward_hook(lambda mod, inp, out: out + torch.randn_like(out))
            try:
                qs = model._infer(x, posterior_mean=True).qs
            finally:
                handle.remove()
            assert all(torch.equal(qs[i].mu, base[i].mu) for i in range(j))
            assert not torch.allclose(qs[j].mu, base[j].mu)


# --- the model API ---------------------------------------------------------------------------------------

_CASES = [
    dict(block=block, inference=inference, **extra)
    for block, extra in [
        ("mlp", dict(attention={"depth": True})),
        ("mlp", dict(attention={"depth": True}, generative_skip=True)),
        ("conv", dict(attention={"levels": [0, 2], "depth": True})),
        ("conv", dict(attention={"levels": [1], "depth": True}, generative_skip=True)),
    ]
    for inference in ("ladder", "top_down", "bottom_up")
]


@pytest.mark.parametrize("case", _CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_attentive_models_have_the_usual_shapes_and_gradients_reach_every_parameter(case):
    case = dict(case)
    model = _model(case.pop("block"), **case)
    x = _x(model)
    out = model(x)
    assert out.elbo.shape == (B,) and torch.isfinite(out.elbo).all() and len(out.kl) == 3
    out.loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    model.eval()
    assert model.log_likelihood(x, num_samples=3).shape == (B,)
    assert model.sample(2).shape == (2, *model.data_shape)
    assert model.sample_conditional(x, keep_top=1).shape == x.shape


def test_attentive_model_round_trips_through_save_and_load(tmp_path):
    model = _model("conv", attention={"levels": [0], "depth": True}).eval()
    model.save_pretrained(tmp_path)
    again = hvae.load(tmp_path)
    x = _x(model)
    torch.manual_seed(0)
    a = model.log_likelihood(x, num_samples=2)
    torch.manual_seed(0)
    assert torch.equal(a, again.log_likelihood(x, num_samples=2))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(attention={"levels": [0]}), "conv-type block"),
        (dict(block="conv", attention={"levels": [3]}), r"attention\.levels: distinct level indices in 0\.\.2"),
        (dict(block="conv", attention={"levels": [0, 0]}), r"attention\.levels: distinct"),
        (dict(block="conv", attention={"levels": [0], "heads": 3}), r"attention\.heads: 3 must divide"),
        (dict(attention={"depth": True, "depth_dim": 9}), r"attention\.depth_dim: 9 must divide"),
    ],
)
def test_bad_attention_settings_are_refused_naming_the_key(overrides, match):
    block = overrides.pop("block", "mlp")
    with pytest.raises(hvae.ConfigError, match=match):
        _cfg(block, **overrides)


def test_attentive_presets_build_and_the_small_one_trains_a_few_steps(tmp_path):
    from hvae.runconfig import load_run_config
    from hvae.train import train

    cfg = hvae.presets.attentive()
    assert cfg.attention.depth and cfg.attention.levels == [1, 2, 3] and cfg.data_shape == [1, 28, 28]
    run_cfg, raw = load_run_config(
        None,
        [
            "model.preset=attentive_small",
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
    assert model.config.attention.depth and model.step.item() > 0


def test_the_audio_preset_runs_with_depth_attention():
    torch.manual_seed(0)
    cfg = hvae.presets.get("audio_digits").replace(attention={"depth": True})  # sequences (B, C, T) at 3 resolutions
    model = hvae.build_model(cfg)
    x = torch.randn(2, *cfg.data_shape)
    model(x).loss.backward()
    assert model.eval().log_likelihood(x, num_samples=2).isfinite().all()
