"""The paper presets as the official code builds and trains them (docs/fidelity.md cites each value):
the per-dimension gradient thresholds of VDVAE, NVAE's KL coefficient and spectral penalty, the
parametrisations, the initialisation, and the first steps of each paper preset on data of its shape."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hvae import build_model, presets
from hvae.config import ConfigError
from hvae.distributions import raw_from_scale, scale_from_raw
from hvae.nets.vdvae import GainBiasConv2d
from hvae.optim import make_optimizer
from hvae.runconfig import load_run_config
from hvae.train import TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[1]

# vdvae_cifar10's construction at a size two shared CPU cores train 50 steps of in a test: width 8 instead of
# 384 and 3 levels (16x16, 8x8, 1x1) instead of 43; the same cells, options and 3x32x32 images
VDVAE_REDUCED = [
    "model.hidden_dims=[8,8,8]",
    "model.latent_dims=[8,8,8]",
    "model.strides=[2,2,8]",
    # Encoder.build's layout at the first level of each resolution: one block before the pooling, one after
    "model.vdvae.encoder_depths=[2,2,2]",
]


def _random_images(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8))
    return path


def _vdvae_run(tmp_path, *overrides):
    data = _random_images(tmp_path / "images.npz", 440)
    cfg, raw = load_run_config(
        ROOT / "configs/vdvae_cifar10.yaml",
        [
            *VDVAE_REDUCED,
            "data.source=npz",
            f"data.path={data}",
            "data.val_fraction=0.05",
            "train.epochs=2",
            "train.max_steps=50",
            "train.batch_size=8",
            "train.precision=fp32",
            "train.progress=false",
            "train.compile=never",
            "train.log_every=1",
            "train.eval_every=1000",
            "train.checkpoint_every=1000",
            *overrides,
        ],
    )
    return cfg, raw


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_vdvae_cifar10_thresholds_per_dimension_skip_no_update_on_random_images(tmp_path):
    cfg, raw = _vdvae_run(tmp_path)
    assert (cfg.train.grad_norm_per, cfg.train.grad_clip, cfg.train.skip_threshold) == ("dim", 200.0, 400.0)
    assert (cfg.train.optimizer, cfg.train.adam_beta2, cfg.train.batch_size) == ("adamw", 0.9, 8)
    notes = []
    out = train(cfg, tmp_path / "dim", raw=raw, log=notes.append)
    rows = [r for r in _rows(out) if r.get("split") == "train"]
    assert rows[-1]["step"] == 50 and len(rows) == 50 and rows[-1]["skipped"] == 0, [n for n in notes if "skipped" in n]
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] <= 400 for r in rows)
    assert np.mean([r["loss"] for r in rows[-10:]]) < np.mean([r["loss"] for r in rows[:10]])
    # the same thresholds read per example (hvae's loss, 3,072 times the per-dimension one) skip every update
    cfg, raw = _vdvae_run(tmp_path, "train.grad_norm_per=example", "train.max_consecutive_skips=3")
    with pytest.raises(TrainingDiverged, match="skip_threshold=400"):
        train(cfg, tmp_path / "example", raw=raw, log=lambda m: None)


def test_grad_norm_per_dim_logs_the_per_example_norm_divided_by_the_size(tmp_path):
    base = [
        "model.preset=small",
        "model.latent_dims=[4,2]",
        "model.hidden_dims=[16,8]",
        "data.source=digits",
        "data.flatten=true",
        "data.binarize=dynamic",
        "data.max_examples=100",
        "train.epochs=1",
        "train.max_steps=1",
        "train.batch_size=32",
        "train.optimizer=adamax",
        "train.progress=false",
        "train.log_every=1",
    ]
    norms = {}
    for per in ("example", "dim"):
        cfg, raw = load_run_config(None, [*base, f"train.grad_norm_per={per}"])
        out = train(cfg, tmp_path / per, raw=raw, log=lambda m: None)
        (row,) = [r for r in _rows(out) if "grad_norm" in r]
        norms[per] = row["grad_norm"]
    assert norms["dim"] == pytest.approx(norms["example"] / 64, rel=1e-5)  # 8x8 digits: D = 64
    with pytest.raises(ConfigError, match="grad_norm_per"):
        load_run_config(None, [*base, "train.grad_norm_per=pixel"])


def test_kl_weight_is_nvae_kl_coeff_with_its_floor():
    m = build_model(presets.nvae_small(kl_warmup_steps=300, kl_const_steps=10, kl_warmup_floor=1e-4))

    def kl_coeff(step, total_step, constant_step, min_kl_coeff):  # NVAE utils.py, verbatim
        return max(min((step - constant_step) / total_step, 1.0), min_kl_coeff)

    for step in (0, 5, 10, 11, 100, 309, 310, 311, 5000):
        assert m.beta_at(step) == pytest.approx(kl_coeff(step, 300, 10, 1e-4), rel=1e-12)
    assert m.beta_at(0) == 1e-4 and m.beta_at(310) == 1.0


def test_kl_warm_up_fractions_of_the_run_set_the_steps(tmp_path):
    cfg, raw = load_run_config(
        ROOT / "configs/nvae_mnist.yaml",
        ["data.source=digits", "data.flatten=false", "model.data_shape=[1,8,8]", "model.latent_dims=[20]"]
        + ["model.hidden_dims=[32]", "model.strides=[2]", "train.epochs=10", "train.batch_size=20"],
    )
    from hvae.data import load_dataset
    from hvae.train import resolve_config

    ds = load_dataset(cfg.data)
    per_epoch = ds.num_batches("train", 20)
    resolved = resolve_config(cfg, raw, ds)
    assert resolved.model.kl_warmup_steps == round(0.3 * 10 * per_epoch)
    assert resolved.model.kl_const_steps == round(1e-4 * 10 * per_epoch)
    assert resolved.model.kl_warmup_floor == 1e-4
    with pytest.raises(ConfigError, match="kl_warmup_fraction and train.kl_warmup_epochs"):
        load_run_config(ROOT / "configs/nvae_mnist.yaml", ["train.kl_warmup_epochs=3"])


def test_nvae_presets_set_the_official_run_commands_values():
    for name in ("nvae_mnist", "nvae_cifar10"):
        c = presets.get(name)
        assert (c.spectral.reg, c.spectral.reg_warmup_steps) == (1e-2, 0)  # --weight_decay_norm 1e-2, no anneal
        assert (c.spectral.iterations, c.spectral.seed_iterations) == (4, 40)
        assert (c.spectral.over, c.bn_scale_penalty, c.scale_param, c.state_activation) == (
            "conv",
            True,
            "softclamp",
            "linear",
        )
    assert presets.nvae_cifar10().kl_warmup_steps == int(0.3 * 400 * (50000 // 256))
    cfg, _ = load_run_config(ROOT / "configs/nvae_cifar10.yaml", [])
    t = cfg.train
    assert (t.optimizer, t.adam_eps, t.weight_decay, t.grad_clip, t.lr_warmup_steps) == (
        "adamax",
        1e-3,
        3e-4,
        None,
        975,
    )
    v = presets.vdvae_cifar10()
    assert (v.scale_param, v.state_activation, v.official_init) == ("log", "linear", True)
    assert presets.lvae_mnist() == presets.lvae_mnist()  # and lvae_mnist is untouched: see test_lvae_mnist_is_exact


def test_lvae_mnist_is_exact():
    c = presets.lvae_mnist()
    assert (c.state_activation, c.scale_param, c.official_init, c.spectral.reg) == ("activation", "variance", False, 0)
    assert c.latent_dims == [64, 32, 16, 8, 4] and c.hidden_dims == [512, 256, 128, 64, 32]


def test_soft_clamp_and_log_sigma_parametrisations_in_closed_form():
    raw = torch.linspace(-30, 30, 61)
    assert torch.allclose(scale_from_raw(raw, 1e-3, "softclamp"), torch.exp(5 * torch.tanh(raw / 5)) + 1e-2)
    assert torch.allclose(scale_from_raw(raw, 1e-3, "log"), raw.exp())
    s = torch.tensor([0.02, 0.5, 1.0, 3.0])
    for param in ("log", "softclamp"):
        assert torch.allclose(scale_from_raw(raw_from_scale(s, 1e-3, param), 1e-3, param), s, atol=1e-6)
    m = build_model(presets.nvae_small(scale_param="softclamp"))
    layer = m.layers[0]
    q = layer.family.from_raw(torch.cat([torch.full((1, 8, 2, 2), 40.0), torch.zeros(1, 8, 2, 2)], 1))
    assert torch.allclose(q.mu, torch.full_like(q.mu, 5 * math.tanh(8.0)))  # mu = 5 tanh(mu / 5)
    assert torch.allclose(q.sigma, torch.full_like(q.sigma, 1.01))


def test_nvae_residual_posterior_scale_is_an_exp_of_the_head():
    torch.manual_seed(0)
    old = {**presets.NVAE_SMALL_BEFORE, "scale_param": "softclamp", "state_activation": "linear"}  # 1x1 heads
    m = build_model(presets.nvae_small(**old)).eval()
    layer = m.layers[0]
    x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.5))
    with torch.no_grad():
        torch.nn.init.normal_(layer.posterior_head.weight, std=0.1)
        torch.nn.init.normal_(layer.posterior_head.bias, std=0.1)
        assert torch.isfinite(m(x).elbo).all()
        ctx = torch.randn(2, layer.post_from_d.out_channels, 8, 8)
        h = torch.randn(2, layer.prior_net.out_ch, 8, 8)
        p = layer.family.prior_from_raw(layer.prior_head(h))
        raw = layer.posterior_head(layer.post_act(ctx + layer.post_from_h(h)))
        q = layer.posterior(ctx, p, h)
    d_mu, d_log_sigma = raw.chunk(2, dim=1)
    assert torch.allclose(q.mu, p.mu + d_mu, atol=1e-6)
    assert torch.allclose(q.sigma, p.sigma * d_log_sigma.exp(), atol=1e-6)


def test_linear_state_is_wz_z_plus_wh_h():
    torch.manual_seed(0)
    layer = build_model(presets.vdvae_small(**{**presets.VDVAE_SMALL_BEFORE, "state_activation": "linear"})).layers[0]
    z, h = torch.randn(2, 8, 16, 16), torch.randn(2, 32, 16, 16)
    expected = F.conv2d(z, layer.trans_from_z.weight, layer.trans_from_z.bias) + F.conv2d(
        h, layer.trans_from_h.weight, layer.trans_from_h.bias
    )
    assert torch.allclose(layer.transition(z, h), expected, atol=1e-6)
    assert torch.allclose(layer.transition(z, h), layer.trans_from_z(z) + h, atol=1e-6)  # W_h = I at first


def test_vdvae_official_init_gives_a_standard_normal_prior_and_scaled_projections():
    torch.manual_seed(0)
    old = {**presets.VDVAE_SMALL_BEFORE, "state_activation": "linear", "scale_param": "log"}  # W_z, 1x1 heads
    cfg = presets.vdvae_small(**{**old, "official_init": True})
    plain = build_model(presets.vdvae_small(**old))
    torch.manual_seed(0)
    m = build_model(cfg)
    L = cfg.num_layers
    for layer, ref in zip(m.layers[:-1], plain.layers[:-1]):
        p = layer.family.prior_from_raw(layer.prior_head(torch.randn(3, layer.prior_net.out_ch, 4, 4)))
        assert torch.equal(p.mu, torch.zeros_like(p.mu)) and torch.equal(p.sigma, torch.ones_like(p.sigma))
        assert torch.allclose(layer.trans_from_z.weight, ref.trans_from_z.weight * math.sqrt(1 / L))
        last = [b.branch[-1].weight for b in layer.prior_net if hasattr(b, "branch")]
        ref_last = [b.branch[-1].weight for b in ref.prior_net if hasattr(b, "branch")]
        assert all(torch.allclose(a, b / 0.1 * math.sqrt(1 / L)) for a, b in zip(last, ref_last))


def _power_sigma(W: torch.Tensor, u: torch.Tensor, iterations: int) -> torch.Tensor:
    for _ in range(iterations):
        v = F.normalize(u @ W, dim=0, eps=1e-12)
        u = F.normalize(W @ v, dim=0, eps=1e-12)
    return u @ W @ v


def test_spectral_penalty_iterations_convs_only_and_batch_norm_scales():
    torch.manual_seed(0)
    cfg = presets.nvae_small(spectral={"iterations": 4, "seed_iterations": 40, "over": "conv"}, bn_scale_penalty=True)
    m = build_model(cfg)
    sn = m.spectral
    mods = [m.get_submodule(n) for n in sn.names]
    assert all(isinstance(mod, torch.nn.Conv2d) for mod in mods)  # SE's linear layers excluded
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    for b in bns:
        torch.nn.init.uniform_(b.weight, -2, 2)
    key, names = next(iter(sn.groups.items()))
    u0 = getattr(sn, f"u_{key}")[0].clone()
    W = m.get_submodule(names[0]).weight.detach().reshape(len(u0), -1)
    first = sn(m)
    assert first[0].item() == pytest.approx(_power_sigma(W, u0, 40).item(), rel=1e-5)  # 40 the first time
    u1 = getattr(sn, f"u_{key}")[0].clone()
    second = sn(m)
    assert second[0].item() == pytest.approx(_power_sigma(W, u1, 4).item(), rel=1e-5)  # then 4 per step
    tail = second[len(sn.names) :]
    assert torch.allclose(tail, torch.stack([b.weight.abs().max() for b in bns]))


def test_adamw_decays_weights_decoupled_as_torch_adamw():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = make_optimizer(a, lr=1e-2, name="adamw", weight_decay=0.1, betas=(0.9, 0.9))
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.9))
    x = torch.randn(7, 5)
    for _ in range(3):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("lvae_mnist", {}),
        # the paper presets' cells, resolutions and options at a width and a number of groups two CPU cores
        # train in seconds (the full widths: see test_paper_presets_build_at_full_size)
        ("nvae_mnist", dict(latent_dims=[8] * 3, hidden_dims=[16, 16, 32], strides=[4, 1, 2])),
        ("nvae_cifar10", dict(latent_dims=[8] * 3, hidden_dims=[16] * 3, strides=[2, 1, 1])),
        (
            "vdvae_cifar10",
            dict(latent_dims=[16] * 4, hidden_dims=[16] * 4, strides=[1, 2, 2, 8], vdvae={"encoder_depths": [2] * 4}),
        ),
    ],
)
def test_paper_presets_first_steps_lower_the_loss_with_finite_kl_and_gradient(name, overrides):
    torch.manual_seed(0)
    cfg = presets.get(name, **overrides, kl_warmup_steps=0)
    m = build_model(cfg).train()
    shape = cfg.data_shape
    g = torch.Generator().manual_seed(1)
    if cfg.likelihood == "bernoulli":
        x = (torch.rand(8, *shape, generator=g) < 0.3).float()
    else:
        x = torch.randint(0, 256, (8, *shape), generator=g).float() / 255
    opt = make_optimizer(m, lr=1e-3, name="adamax")
    D = math.prod(shape)
    losses = []
    for step in range(6):
        out = m(x)
        opt.zero_grad()
        out.loss.backward()
        gn = torch.nn.utils.get_total_norm([p.grad for p in m.parameters() if p.grad is not None])
        kl = sum(k.mean() for k in out.kl)  # nats per example
        assert torch.isfinite(kl) and torch.isfinite(gn)
        if step == 0:
            # hvae's residual posterior starts at q = p below the top; NVAE's (official_heads) does not
            if cfg.residual_posterior and not cfg.nvae.official_heads:
                assert all(k.abs().max() < 1e-4 for k in out.kl[:-1])
            # VDVAE's guard (train.grad_norm_per: dim) would let the first update through
            assert name != "vdvae_cifar10" or gn / D < 400
        losses.append(out.loss.item())
        opt.step()
    assert losses[-1] < losses[0]


def _official_vdvae_cifar10_params() -> int:
    """openai/vdvae's cifar10 model counted from its construction (vae.py ``Encoder.build``, ``DecBlock``,
    ``Decoder.build``; vae_helpers.py ``DmolNet``; hps.py ``cifar10``): width 384, bottleneck 96, zdim 16."""
    w, mid, z = 384, 96, 16

    def block(i, o, k3):  # Block: 1x1 i->mid, two 3x3 (1x1 at res <= 2) mid->mid, 1x1 mid->o, with biases
        k = 9 if k3 else 1
        return i * mid + mid + 2 * (mid * mid * k + mid) + mid * o + o

    enc = 3 * w * 9 + w + sum(n * block(w, w, r > 2) for r, n in ((32, 12), (16, 7), (8, 7), (4, 4), (1, 3)))
    dec = sum(
        n * (block(2 * w, 2 * z, r > 2) + block(w, 2 * z + w, r > 2) + z * w + w + block(w, w, r > 2))
        for r, n in ((1, 1), (4, 3), (8, 6), (16, 11), (32, 22))
    )
    bias_maps = sum(w * r * r for r in (1, 4, 8, 16, 32))
    return enc + dec + bias_maps + (w * 100 + 100) + 2 * w  # DmolNet's 1x1 out conv, the final gain and bias


def test_vdvae_cifar10_parameter_count_against_the_official_construction():
    assert _official_vdvae_cifar10_params() == 39_145_700  # the paper's 39M
    with torch.device("meta"):  # shapes only: no memory, no initialisation, no forward pass
        model = build_model(presets.vdvae_cifar10())
    n = sum(p.numel() for p in model.parameters())
    assert n == 39_145_700  # every term of the official construction, Decoder.build's gain and bias (2 x 384) too
    head = model.decoder_head
    assert isinstance(head, GainBiasConv2d) and head.gain.numel() + head.out_bias.numel() == 768


def test_vdvae_output_gain_and_bias_are_final_fn_before_the_output_conv():
    torch.manual_seed(0)
    vdvae = {"encoder_depths": [1, 1], "output_gain": True}
    cfg = presets.vdvae_cifar10(latent_dims=[4] * 2, hidden_dims=[16] * 2, strides=[1, 32], vdvae=vdvae)
    head = build_model(cfg).decoder_head
    assert torch.equal(head.gain, torch.ones(1, 16, 1, 1)) and torch.equal(head.out_bias, torch.zeros(1, 16, 1, 1))
    with torch.no_grad():
        head.gain.normal_()
        head.out_bias.normal_()
    x = torch.randn(2, 16, 4, 4)
    expected = F.conv2d(x * head.gain + head.out_bias, head.weight, head.bias)  # DmolNet(final_fn(x))
    assert torch.allclose(head(x), expected, atol=1e-6)
    plain = build_model(presets.vdvae_small(**presets.VDVAE_SMALL_BEFORE)).decoder_head  # off: the plain 1x1
    assert type(plain) is torch.nn.Conv2d


# --- VDVAE's level as vae.py builds it (model.vdvae) -------------------------------------------------------

_VDVAE_OPTIONS = dict(
    posterior_block=True,
    prior_block=True,
    identity_state=True,
    pointwise_at=2,
    bias_maps=True,
    upsample_last=True,
)


def _vdvae_model(seed=0, **vdvae):
    """vdvae_cifar10's construction at width 16, levels at 32, 16, 16, 8, 1 (strides 1, 2, 1, 2, 8)."""
    torch.manual_seed(seed)
    cfg = presets.vdvae_cifar10(
        latent_dims=[4] * 5,
        hidden_dims=[16] * 5,
        strides=[1, 2, 1, 2, 8],
        vdvae={**_VDVAE_OPTIONS, "encoder_depths": [2, 2, 0, 2, 2], **vdvae},
    )
    return build_model(cfg)


def _perturb(module: torch.nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """Random weights and biases everywhere (the zero initialisations would hide a wrong wiring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def test_vdvae_posterior_is_dec_block_enc_on_the_concatenation_of_h_and_d():
    layer = _vdvae_model().layers[1]  # 16x16
    blk = layer.posterior_block
    _perturb(blk)
    conv = [m for m in blk.modules() if isinstance(m, torch.nn.Conv2d)]
    # vae.py DecBlock: enc = Block(2 width, width * bottleneck_multiple, 2 zdim, residual=False), 3x3 at 16x16
    assert [tuple(c.weight.shape) for c in conv] == [(4, 32, 1, 1), (4, 4, 3, 3), (4, 4, 3, 3), (8, 4, 1, 1)]
    h, d = torch.randn(2, 16, 16, 16), torch.randn(2, 16, 16, 16)
    p = layer.family.prior_top((2, 4, 16, 16), None, torch.float32)
    q = layer.posterior(layer.context(d), p, h)
    x = torch.cat([h, d], 1)  # vae.py: self.enc(torch.cat([x, acts], dim=1)), Block.forward verbatim
    for c in conv:
        x = c(F.gelu(x))
    qm, qv = x.chunk(2, dim=1)
    assert torch.allclose(q.mu, qm, atol=1e-5) and torch.allclose(q.sigma, qv.exp(), atol=1e-5)  # log sigma


def test_vdvae_prior_block_gives_p_and_the_stream_and_starts_at_a_standard_normal():
    m = _vdvae_model()
    layer = m.layers[1]  # 16x16, below the first level there (2): no bias map
    assert layer.feature_map is None and layer.trans_from_h is None and layer.prior_head is None
    state = torch.randn(2, 16, 16, 16)
    p, feats = layer.prior(state, 2)
    assert torch.equal(p.mu, torch.zeros_like(p.mu)) and torch.equal(p.sigma, torch.ones_like(p.sigma))
    assert torch.equal(feats.stream, feats.h)  # zero_last: nothing added to the stream at first
    _perturb(layer)
    p, feats = layer.prior(state, 2)
    h = layer.prior_net(state)
    out = layer.prior_block.block.branch(h)  # (B, 2 zdim + width, H, W)
    assert out.shape == (2, 8 + 16, 16, 16)
    assert torch.allclose(p.mu, out[:, :4]) and torch.allclose(p.sigma, out[:, 4:8].exp())
    assert torch.allclose(feats.h, h) and torch.allclose(feats.stream, h + out[:, 8:])
    z = torch.randn(2, 4, 16, 16)
    # vae.py DecBlock.forward: x = x + xpp; x = x + z_proj(z) (W_h the identity, no parameters)
    assert torch.allclose(layer.transition(z, feats), h + out[:, 8:] + layer.trans_from_z(z), atol=1e-6)
    # and q reads h, the stream before the prior's extra output (DecBlock.sample: enc before x + xpp)
    ctx = layer.context(torch.randn(2, 16, 16, 16))
    assert torch.allclose(layer.posterior(ctx, p, feats).mu, layer.posterior(ctx, p, feats.h).mu)


def test_vdvae_bias_maps_start_each_resolution_and_the_top_prior_is_read_from_its_map():
    m = _vdvae_model()
    maps = {l: tuple(layer.feature_map.shape) for l, layer in enumerate(m.layers) if layer.feature_map is not None}
    # vae.py Decoder.build: bias_xs, one (1, width, res, res) per resolution, read by its first block
    assert maps == {4: (1, 16, 1, 1), 3: (1, 16, 8, 8), 2: (1, 16, 16, 16), 0: (1, 16, 32, 32)}
    top = m.layers[4]
    p, feats = top.prior(None, 3)
    assert torch.equal(p.mu, torch.zeros_like(p.mu)) and torch.equal(p.sigma, torch.ones_like(p.sigma))
    _perturb(m)
    p, feats = top.prior(None, 3)
    raw, _ = top.prior_block(top.feature_map)  # the 1x1 block's prior: prior(bias_xs[1])
    assert torch.allclose(p.mu, raw[:, :4].expand(3, -1, -1, -1)) and torch.allclose(p.sigma, raw[:, 4:].exp())
    assert torch.equal(feats.h, top.feature_map.expand(3, -1, -1, -1))
    # below: the map is added to the upsampled stream (vae.py: x = bias + interpolate(xs[mixin]))
    state = torch.randn(3, 16, 1, 1)
    _, feats = m.layers[3].prior(state, 3)
    assert torch.allclose(feats.h, m.layers[3].prior_net(state) + m.layers[3].feature_map)


def test_vdvae_encoder_has_the_official_33_blocks_and_1x1_middle_convs_at_small_resolutions():
    with torch.device("meta"):
        model = build_model(presets.vdvae_cifar10())

    def kinds(seq):  # "3" / "1": a block with 3x3 / 1x1 middle convs, "p": pooling, "u": upsampling, "c": a conv
        out = ""
        for mod in seq:
            if isinstance(mod, torch.nn.Conv2d):
                out += "c"
            elif isinstance(mod, torch.nn.AvgPool2d):
                out += "p"
            elif isinstance(mod, torch.nn.Upsample):
                out += "u"
            else:
                out += str(mod.branch[3].kernel_size[0])
        return out

    enc = [kinds(b) for b in model.encoder]
    # hps.py enc_blocks "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3": a stem, then 33 blocks (1x1 at 1x1)
    assert [e for e in enc if e] == ["c" + "3" * 11, "3p" + "3" * 6, "3p" + "3" * 6, "3p333", "3p111"]
    assert enc.index("3p111") == 42 and sum(e.count("3") + e.count("1") for e in enc) == 33
    # top-down: the 1x1 level's resnet runs at 1x1 (1x1 convs), then the next resolution upsamples ("4m1")
    assert kinds(model.layers[41].prior_net) == "1u" and kinds(model.layers[40].prior_net) == "3"
    assert all(b.residual for e in model.encoder for b in e if hasattr(b, "residual"))


def test_vdvae_official_init_scales_the_encoder_blocks_last_convs_by_sqrt_one_over_33():
    base = dict(latent_dims=[4] * 5, hidden_dims=[16] * 5, strides=[1, 2, 1, 2, 8])
    vd = {**_VDVAE_OPTIONS, "encoder_depths": [2, 2, 0, 2, 2]}
    torch.manual_seed(0)
    official = build_model(presets.vdvae_cifar10(**base, vdvae=vd))
    torch.manual_seed(0)
    plain = build_model(presets.vdvae_cifar10(**base, vdvae=vd, official_init=False))
    last = [b.last.weight for e in official.encoder for b in e if hasattr(b, "last")]
    ref = [b.last.weight for e in plain.encoder for b in e if hasattr(b, "last")]
    assert len(last) == 8
    # vae.py Encoder.build: b.c4.weight *= sqrt(1 / n_blocks), n_blocks = 8 here (33 in vdvae_cifar10)
    assert all(torch.allclose(a, b / 0.1 * math.sqrt(1 / 8)) for a, b in zip(last, ref))
    # and the decoder's blocks (DecBlock.resnet, the output cell included) by sqrt(1 / levels)
    dec = [b.last.weight for b in official.decoder if hasattr(b, "last")]
    dec_ref = [b.last.weight for b in plain.decoder if hasattr(b, "last")]
    assert len(dec) == 1 and torch.allclose(dec[0], dec_ref[0] / 0.1 * math.sqrt(1 / 5))
    # vae_helpers.py get_conv: every conv's bias starts at zero (zero_bias=True), z_proj's too; torch's otherwise
    cells = [*official.encoder, official.decoder, *(layer.trans_from_z for layer in official.layers)]
    cells += [layer.prior_net for layer in official.layers if layer.prior_net is not None]
    biases = [m.bias for c in cells for m in c.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(biases) > 30 and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    assert any(m.bias.abs().sum() > 0 for m in plain.encoder.modules() if isinstance(m, torch.nn.Conv2d))


def test_vdvae_options_keep_other_models_and_are_checked(tmp_path):
    before = presets.vdvae_small(**presets.VDVAE_SMALL_BEFORE)  # the preset as it was: every option off
    assert before.vdvae == before.vdvae.__class__() and not before.official_init
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model(before).parameters()) == 30_658  # as before
    old = before.to_dict()
    del old["vdvae"]  # a config saved before the options (a run's config.yaml, a saved model's) loads as it was
    assert type(before).from_dict(old) == before
    torch.manual_seed(0)
    model = build_model(type(before).from_dict(old)).eval()
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
    torch.manual_seed(1)
    a = model(x).elbo
    torch.manual_seed(1)
    assert torch.equal(back(x).elbo, a)
    v = presets.vdvae_small().vdvae  # the preset now: vae.py's construction
    assert (v.posterior_block, v.prior_block, v.identity_state, v.bias_maps, v.upsample_last, v.output_gain) == (
        True,
    ) * 6
    assert v.encoder_depths == [2, 0, 1, 1] and presets.vdvae_small().official_init
    with pytest.raises(ConfigError, match=r"vdvae.encoder_depths: needs one entry per latent layer \(4\), got 43"):
        presets.vdvae_cifar10(latent_dims=[16] * 4, hidden_dims=[16] * 4, strides=[1, 2, 2, 8])
    with pytest.raises(ConfigError, match="set block: vdvae"):
        presets.nvae_small(vdvae={"bias_maps": True})
    with pytest.raises(ConfigError, match="one width in hidden_dims"):
        presets.vdvae_small(hidden_dims=[32, 32, 32, 64], vdvae={"identity_state": True})
    with pytest.raises(ConfigError, match="encoder_depths: every entry must be >= 0"):
        presets.vdvae_small(vdvae={"encoder_depths": [1, -1, 1, 1]})


def test_vdvae_construction_recomputed_by_checkpointing_gives_the_same_loss_and_gradients():
    x = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(2)).float() / 255
    grads = []
    for checkpointing in (False, True):
        m = _vdvae_model()
        _perturb(m, seed=4, std=0.05)  # the prior's extra output and the bias maps non-zero
        m.config.checkpointing = checkpointing
        torch.manual_seed(7)
        out = m(x)
        out.loss.backward()
        grads.append((out.loss.detach(), [p.grad.clone() for p in m.parameters()]))
    (l0, g0), (l1, g1) = grads
    assert torch.isfinite(l0) and torch.allclose(l0, l1)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g0, g1))
