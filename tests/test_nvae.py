"""NVAE / VDVAE hierarchies: cells, shapes through every scale, the residual posterior, spectral
regularisation, activation checkpointing, padding of any image size, batch-norm readjustment, presets
and the CIFAR-10 batch reader."""

import pickle

import numpy as np
import pytest
import torch

import hvae
from hvae import presets
from hvae.data.cifar10 import read_batch, read_cifar10
from hvae.data.sources import DataError
from hvae.distributions import raw_from_scale
from hvae.sampling import readjust_batchnorm
from hvae.schedules import spectral_coefficient as coefficient
from hvae.spectral import SpectralNorms

B = 4


def _cfg(block="nvae", **overrides):
    base = dict(
        data_shape=[1, 8, 8],
        latent_dims=[3, 3, 2],
        hidden_dims=[8, 8, 16],
        strides=[2, 1, 2],  # two groups at 4x4, one at 2x2
        depth=1,
        block=block,
        inference="top_down",
        generative_skip=True,
        residual_posterior=block == "nvae",
        activation="swish" if block == "nvae" else "gelu",
        batch_norm=block == "nvae",
    )
    return hvae.ModelConfig.from_dict({**base, **overrides})


def _model(block="nvae", seed=0, **overrides):
    torch.manual_seed(seed)
    return hvae.build_model(_cfg(block, **overrides))


def _x(model, n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.data_shape, generator=g).round()


def _step(model, lr=1e-2):
    """One Adam step: moves every weight, the batch-norm statistics, ``step`` and the spectral vectors."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model(_x(model)).loss.backward()
    opt.step()
    return model.eval()


# --- shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["nvae", "vdvae"])
def test_latents_have_the_shape_of_their_scale(block):
    # 16x16 -> 8x8 (two groups) -> 4x4 -> 1x1
    geometry = dict(latent_dims=[3, 3, 2, 2], hidden_dims=[8, 8, 16, 16], strides=[2, 1, 2, 4])
    model = _model(block, data_shape=[1, 16, 16], **geometry)
    x = _x(model)
    zs = model.encode(x)
    assert [tuple(z.shape) for z in zs] == [(B, 3, 8, 8), (B, 3, 8, 8), (B, 2, 4, 4), (B, 2, 1, 1)]
    out = model(x)
    assert out.elbo.shape == (B,) and len(out.kl) == 4 and torch.isfinite(out.loss)
    assert model.decode(zs).mean.shape == (B, 1, 16, 16)
    assert model.sample(3, temperature=0.5).shape == (3, 1, 16, 16)
    assert model.log_likelihood(x, num_samples=3).shape == (B,)


def test_nvae_cells_double_channels_going_down_and_halve_them_going_up():
    from hvae.nets import nvae

    enc = nvae.encoder_block(1, 32, 2, 4)
    dec = nvae.decoder_block(32, 32, 2, -4)
    x = torch.randn(2, 1, 16, 16)
    assert enc(x).shape == (2, 32, 4, 4) and enc.out_ch == 32
    assert dec(torch.randn(2, 32, 4, 4)).shape == (2, 8, 16, 16) and dec.out_ch == 8
    convs = [m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(m.groups == m.in_channels > 1 and m.kernel_size == (5, 5) for m in convs)  # depthwise 5x5
    assert any(isinstance(m, nvae.SqueezeExcite) for m in enc.modules())


def test_vdvae_blocks_are_bottlenecks_without_batch_norm():
    from hvae.nets import vdvae

    blk = vdvae.decoder_block(16, 16, 1, -2)
    convs = [m for m in blk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [
        (16, 4, (1, 1)),
        (4, 4, (3, 3)),
        (4, 4, (3, 3)),
        (4, 16, (1, 1)),
    ]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in _model("vdvae").modules())
    assert blk(torch.randn(2, 16, 3, 5)).shape == (2, 16, 6, 10)


@pytest.mark.parametrize("block", ["nvae", "vdvae"])
@pytest.mark.parametrize("shape", [[1, 10, 14], [3, 7, 5]])
def test_images_of_any_size_are_padded_and_cropped_inside_the_model(block, shape):
    model = _model(block, data_shape=shape, likelihood="bernoulli")
    x = _x(model)
    out = model(x)
    assert torch.isfinite(out.elbo).all() and out.px.mean.shape == (B, *shape)
    assert model.sample(2).shape == (2, *shape)
    H, W = shape[1:]
    assert [tuple(z.shape[2:]) for z in out.zs] == [(-(-H // 4) * 2, -(-W // 4) * 2)] * 2 + [(-(-H // 4), -(-W // 4))]


def test_config_accepts_power_of_two_strides_and_any_size_only_for_nvae_and_vdvae():
    assert _cfg(data_shape=[1, 10, 14], strides=[4, 1, 2]).strides == [4, 1, 2]
    with pytest.raises(hvae.ConfigError, match="power of two"):
        _cfg(strides=[3, 1, 1])
    with pytest.raises(hvae.ConfigError, match="block: nvae needs images"):
        _cfg(data_shape=[64])
    with pytest.raises(hvae.ConfigError, match="must divide"):
        _cfg("conv", data_shape=[1, 10, 14], residual_posterior=False)
    with pytest.raises(hvae.ConfigError, match=r"^spectral\.reg: must be >= 0, got -1\.0$"):
        _cfg(spectral={"reg": -1.0})


# --- gradients, files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block, overrides",
    [("nvae", {}), ("vdvae", {}), ("nvae", dict(inference="ladder", residual_posterior=False))],
)
def test_every_parameter_gets_a_gradient(block, overrides):
    model = _step(_model(block, **overrides)).train()  # after one step the zero-initialised heads are not zero
    model.zero_grad()
    model(_x(model, seed=3)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("block", ["nvae", "vdvae"])
def test_save_load_round_trip_is_exact(tmp_path, block):
    model = _step(_model(block, spectral={"reg": 0.1}))
    model.save_pretrained(tmp_path)
    loaded = hvae.load(tmp_path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert any(k.startswith("spectral.u_") for k in model.state_dict())
    x = _x(model)
    for fn in (lambda m: m(x).elbo, lambda m: m.sample(3, temperature=0.7), lambda m: m.log_likelihood(x, 3)):
        torch.manual_seed(11)
        a = fn(model)
        torch.manual_seed(11)
        assert torch.equal(a, fn(loaded))


# --- posterior -----------------------------------------------------------------------------------------


def test_nvae_residual_posterior_is_the_prior_shifted_and_scaled():
    model = _model().eval()
    layer = model.layers[0]
    d_mu = torch.tensor([0.5, -1.0, 2.0])
    d_sigma = torch.tensor([0.5, 2.0, 0.1])
    with torch.no_grad():
        layer.posterior_head.weight.zero_()
        layer.posterior_head.bias.copy_(torch.cat([d_mu, raw_from_scale(d_sigma, 0.0) - raw_from_scale(1.0, 0.0)]))
        x = _x(model)
        ctx = layer.context(model.encoder[0](model._features(x)))
        p, h_p = layer.prior(torch.randn(B, model.layers[1].state_ch, 4, 4), B)
        q = layer.posterior(ctx, p, h_p)
    assert q.mu.shape == (B, 3, 4, 4)
    assert torch.allclose(q.mu, p.mu + d_mu.view(1, 3, 1, 1), atol=1e-6)
    assert torch.allclose(q.sigma, p.sigma * d_sigma.view(1, 3, 1, 1), atol=1e-6)


# --- spectral regularisation --------------------------------------------------------------------------


def test_power_iteration_matches_the_spectral_norm_of_every_weight():
    model = _model()
    norms = SpectralNorms(model)
    sigma = norms(model, iterations=500)
    assert len(norms.names) == len(sigma) > 10
    for name, s in zip(norms.names, sigma):
        W = model.get_submodule(name).weight
        exact = torch.linalg.matrix_norm(W.detach().reshape(W.shape[0], -1), ord=2)
        assert torch.allclose(s, exact, rtol=1e-3), name


def test_spectral_penalty_enters_the_training_loss_only():
    base = _model()
    model = _model(spectral={"reg": 0.5, "reg_init": 0.5})
    x = _x(base)
    base.train(), model.train()
    torch.manual_seed(0)
    a = base(x)
    torch.manual_seed(0)
    u_before = {k: v.clone() for k, v in model.spectral.named_buffers() if k.startswith("u_") and v.shape[1] > 1}
    b = model(x)
    sigma = model.spectral(model, iterations=0, update=False).sum()
    assert torch.allclose(b.loss - a.loss, 0.5 * sigma, rtol=1e-4)
    assert torch.equal(a.elbo, b.elbo)
    assert all(not torch.equal(v, model.spectral.get_buffer(k)) for k, v in u_before.items())  # iteration advanced
    model.eval(), base.eval()
    torch.manual_seed(0)
    c = base(x)
    torch.manual_seed(0)
    assert torch.allclose(c.loss, model(x).loss)


def test_spectral_lambda_anneals_log_linearly_from_its_initial_value():
    assert coefficient(0, 0.01, 10.0, 100) == pytest.approx(10.0)
    assert coefficient(50, 0.01, 10.0, 100) == pytest.approx((10.0 * 0.01) ** 0.5)
    assert coefficient(100, 0.01, 10.0, 100) == coefficient(10**6, 0.01, 10.0, 100) == pytest.approx(0.01)
    assert coefficient(0, 0.01, 10.0, 0) == 0.01 and coefficient(5, 0.0, 10.0, 100) == 0.0
    on_device = coefficient(torch.tensor(50), 0.01, 10.0, 100)  # the model's step buffer: never read back
    assert isinstance(on_device, torch.Tensor) and float(on_device) == pytest.approx((10.0 * 0.01) ** 0.5)
    assert float(coefficient(torch.tensor(10**6), 0.01, 10.0, 100)) == pytest.approx(0.01)


# --- memory: activation checkpointing ----------------------------------------------------------------


@pytest.mark.parametrize("block", ["nvae", "vdvae"])
def test_checkpointed_and_plain_passes_give_the_same_gradients(block):
    plain = _model(block).train()
    ckpt = hvae.build_model(plain.config.replace(checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    ckpt.train()
    x = _x(plain)
    losses, grads = [], []
    for m in (plain, ckpt):
        torch.manual_seed(4)
        out = m(x)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert torch.equal(losses[0], losses[1])
    for n, g in grads[0].items():
        assert torch.allclose(g, grads[1][n], atol=1e-6, rtol=1e-5), n
    # the recomputation leaves the batch-norm statistics as one forward pass left them
    for (k, v), w in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.allclose(v.float(), w.float()), k


# --- sampling ------------------------------------------------------------------------------------------


def test_batchnorm_readjustment_keeps_samples_and_statistics_finite():
    model = _step(_model())
    enc_bn = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    enc_before = [m.running_mean.clone() for m in enc_bn]
    step = model.step.clone()
    momenta = {m: m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert 0.05 in momenta.values()  # NVAE's cells average their statistics at 0.05
    n = readjust_batchnorm(model, n=4, temperature=0.6, num_batches=3)
    assert n > 0 and not model.training and torch.equal(model.step, step)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()
            assert m.momentum == momenta[m]  # restored after the cumulative average
    assert all(torch.equal(m.running_mean, b) for m, b in zip(enc_bn, enc_before))  # the encoder is untouched
    s = model.sample(5, temperature=[0.6, 0.8, 1.0])
    assert torch.isfinite(s).all() and s.shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="n >= 2"):
        readjust_batchnorm(model, n=1)


def test_batchnorm_readjustment_finds_the_folded_batch_norms_of_an_mlp_and_averages_them_evenly():
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small(batch_norm=True))  # eval mode folds each BN into its Linear
    x = torch.bernoulli(torch.full((32, 64), 0.4))
    for _ in range(3):
        model(x)
    generative = [m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert generative
    n = readjust_batchnorm(model, n=8, temperature=0.5, num_batches=4)
    assert n >= len(generative)
    assert all(int(m.num_batches_tracked) == 4 for m in generative)  # reset, then exactly the 4 passes


def test_an_interrupted_batchnorm_readjustment_leaves_every_statistic_as_it_was():
    model = _step(_model())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real, calls = model.sample, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 3:  # the probe, one pass, then the interrupt
            raise KeyboardInterrupt
        return real(*a, **kw)

    model.sample = interrupted
    with pytest.raises(KeyboardInterrupt):
        readjust_batchnorm(model, n=4, num_batches=5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


# --- presets -------------------------------------------------------------------------------------------


def test_paper_presets_build_with_their_published_geometry():
    mnist = presets.get("nvae_mnist")
    assert mnist.num_layers == 15 and mnist.block == "nvae" and mnist.likelihood == "bernoulli"
    assert set(presets.PRESETS) >= {"nvae_mnist", "nvae_cifar10", "vdvae_cifar10", "nvae_small", "vdvae_small"}
    vd = presets.vdvae_cifar10()
    scales = []
    for s in vd.strides:
        scales.append((scales[-1] if scales else 32) // s)
    assert [scales.count(r) for r in (32, 16, 8, 4, 1)] == [22, 11, 6, 3, 1]


@pytest.mark.parametrize("name", ["nvae_small", "vdvae_small"])
def test_small_presets_train_a_few_steps_with_a_finite_loss(name):
    torch.manual_seed(0)
    model = hvae.build_model(presets.get(name)).train()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    x = torch.rand(4, *model.data_shape)
    if model.config.likelihood == "bernoulli":
        x = x.round()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        out = model(x)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_run_configs_for_the_small_models_load():
    from hvae.runconfig import load_run_config

    cfg, _ = load_run_config("configs/nvae_fashion_small.yaml")
    assert cfg.model.block == "nvae" and cfg.data.source == "fashion_mnist" and cfg.data.binarize == "dynamic"
    cfg, _ = load_run_config("configs/vdvae_colour_small.yaml")
    assert cfg.model.block == "vdvae" and cfg.data.source == "npz"


# --- CIFAR-10 batches ----------------------------------------------------------------------------------


def _write_batch(path, n, seed, protocol=2):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    d = {b"batch_label": b"testing batch", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n}
    path.write_bytes(pickle.dumps(d, protocol=protocol))
    return data, labels


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_reader_parses_python_batches(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = [_write_batch(folder / f"data_batch_{i}", 3, i, protocol) for i in range(1, 6)]
    test_data, test_labels = _write_batch(folder / "test_batch", 2, 9, protocol)
    raw = read_cifar10(tmp_path)
    assert raw.x.shape == (15, 3, 32, 32) and raw.x.dtype == torch.uint8 and raw.scale == 255.0 and raw.levels == 256
    assert torch.equal(raw.x[3:6].reshape(3, -1), torch.from_numpy(written[1][0]))
    assert raw.labels.tolist() == sum((lab for _, lab in written), [])
    assert torch.equal(raw.test_x.reshape(2, -1), torch.from_numpy(test_data))
    assert raw.test_labels.tolist() == test_labels
    # the red plane of pixel (0, 0) is byte 0, green byte 1024, blue byte 2048
    assert raw.x[0, :, 0, 0].tolist() == [written[0][0][0, 0], written[0][0][0, 1024], written[0][0][0, 2048]]


def test_cifar10_is_a_data_source(tmp_path):
    from hvae.data import DataConfig, load_dataset

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", 4, i)
    _write_batch(folder / "test_batch", 3, 9)
    ds = load_dataset(DataConfig(source="cifar10", path=str(tmp_path), val_fraction=0.1))
    assert ds.shape == (3, 32, 32) and ds.levels == 256 and len(ds.test) == 3 and len(ds.train) + len(ds.val) == 20
    assert 0.0 <= float(ds.eval_tensor("test").min()) and float(ds.eval_tensor("test").max()) <= 1.0


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar10_reader_refuses_a_pickle_naming_a_class(tmp_path, capsys):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [1]}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load (builtins|__builtin__)\.print"):
        read_batch(path)
    assert "never run" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), dtype=np.float32), b"labels": [1]}, protocol=2))
    with pytest.raises(DataError, match="uint8"):
        read_batch(path)
    with pytest.raises(DataError, match="missing data_batch_2"):
        read_cifar10(tmp_path)
