"""NVAE's construction as NVlabs/NVAE's code builds it (``model.nvae``; docs/fidelity.md cites file and function):
weight normalisation, the decoder cell's leading batch norm, the residual resampling cells, pre- and
post-processing, the input in [-1, 1], the heads, the learned top map, and the parameter counts of the two
paper presets against the official construction counted term by term."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvae import HierarchicalVAE, build_model, presets
from hvae.config import ConfigError, ModelConfig
from hvae.nets import nvae

# nvae_mnist's construction (stem, two pre-processing blocks of 3 cells, two scales, post-processing) at a width
# two CPU cores run in a second: 4 channels at 32x32, 16 at 8x8, 32 at 4x4
MNIST_REDUCED = dict(latent_dims=[4] * 3, hidden_dims=[16, 16, 32], strides=[4, 1, 2], depth=1)


def _reduced_mnist(**overrides):
    torch.manual_seed(0)
    return build_model(presets.nvae_mnist(**MNIST_REDUCED, **overrides))


def _row_norm(v):
    return v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def test_weight_norm_effective_weight_is_exp_log_g_times_v_over_its_norm():
    torch.manual_seed(0)
    c = nvae.conv(3, 5, 3, weight_norm=True)
    v = c.parametrizations.weight.original
    log_g = c.parametrizations.weight[0].log_weight_norm
    assert log_g.shape == (5, 1, 1, 1)
    assert torch.allclose(log_g, torch.log(_row_norm(v) + 1e-2))  # Conv2D.__init__
    with torch.no_grad():
        log_g.copy_(torch.randn(5, 1, 1, 1))
    w = log_g.exp() * v / (_row_norm(v) + 1e-5)  # normalize_weight_jit
    assert torch.allclose(c.weight, w)
    assert torch.allclose(_row_norm(c.weight), log_g.exp() * _row_norm(v) / (_row_norm(v) + 1e-5))
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(c(x), F.conv2d(x, w, c.bias, padding=1), atol=1e-6)
    c(x).sum().backward()
    assert v.grad is not None and log_g.grad is not None and c.bias.grad is not None
    assert not hasattr(nvae.conv(3, 5, 3), "parametrizations")  # off by default


def test_weight_norm_on_the_convolutions_nvae_normalises_and_the_spectral_penalty_reads_w():
    m = _reduced_mnist()
    normed = {n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and hasattr(mod, "parametrizations")}
    plain = {n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)} - normed
    # the encoder cells' and down cells' convs, the stem and every head are normalised (Conv2D's default) ...
    assert "encoder.0.1" in normed and "layers.0.posterior_head" in normed and "decoder_head" in normed
    assert "layers.0.prior_head" in normed and "layers.0.combiner.conv" in normed
    # ... the decoder cells' own are not (ConvBNSwish and InvertedResidual's last conv: weight_norm=False)
    assert plain and all(".prior_net." in n or n.startswith("decoder.") for n in plain)
    assert all(".skip." not in n for n in plain)  # the up cells' 1x1 skip is normalised
    sn = m.spectral
    name = sn.names[0]
    with torch.no_grad():
        sigma = sn(m, iterations=200)[0]
    w = m.get_submodule(name).weight.detach()
    assert sigma.item() == pytest.approx(torch.linalg.matrix_norm(w.flatten(1), ord=2).item(), rel=1e-3)


def test_decoder_cell_leading_batch_norm():
    plain, led = nvae.decoder_cell(8), nvae.decoder_cell(8, leading_bn=True)
    assert isinstance(led.branch[0], nn.BatchNorm2d) and led.branch[0].num_features == 8
    assert isinstance(plain.branch[0], nn.Conv2d)
    assert [type(a) for a in led.branch[1:]] == [type(a) for a in plain.branch]
    m = _reduced_mnist()
    cells = [c for c in m.layers[0].prior_net if isinstance(c, nvae._Residual)]
    assert cells and all(isinstance(c.branch[0], nn.BatchNorm2d) for c in cells)
    assert (
        build_model(presets.nvae_small(**presets.NVAE_SMALL_BEFORE)).layers[0].prior_net[0].branch[0].__class__
        is nn.Conv2d
    )


def test_factorized_reduce_reads_four_offset_grids():
    torch.manual_seed(0)
    fr = nvae.FactorizedReduce(6, 10)
    assert [c.out_channels for c in fr.convs] == [2, 2, 2, 4]
    x = torch.randn(2, 6, 8, 8)
    a = F.silu(x)
    parts = [a, a[:, :, 1:, 1:], a[:, :, :, 1:], a[:, :, 1:, :]]
    expected = torch.cat([F.conv2d(p, c.weight, c.bias, stride=2) for c, p in zip(fr.convs, parts)], 1)
    assert torch.allclose(fr(x), expected, atol=1e-6) and expected.shape == (2, 10, 4, 4)
    with pytest.raises(ValueError, match=">= 4 output channels"):
        nvae.FactorizedReduce(6, 2)


def test_residual_down_and_up_cells_are_skip_plus_a_tenth_of_the_branch():
    torch.manual_seed(0)
    down = nvae._down(8, 16, residual=True, weight_norm=True).eval()
    x = torch.randn(2, 8, 8, 8)
    assert isinstance(down.skip, nvae.FactorizedReduce)
    assert torch.allclose(down(x), down.skip(x) + 0.1 * down.branch(x), atol=1e-6)
    assert down(x).shape == (2, 16, 4, 4)
    up = nvae._up(16, 8, residual=True, weight_norm=True, leading_bn=True, expand=3).eval()
    y = torch.randn(2, 16, 4, 4)
    skip = F.conv2d(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True), up.skip[1].weight)
    assert up.skip[1].bias is None
    assert torch.allclose(up(y), skip + 0.1 * up.branch(y), atol=1e-5) and up(y).shape == (2, 8, 8, 8)
    assert up.branch[2].out_channels == 3 * 16  # the expansion counts the input channels (InvertedResidual)


def test_pre_and_post_processing_and_output_head_as_nvae_mnist():
    with torch.device("meta"):
        m = build_model(presets.nvae_mnist())
    enc0 = list(m.encoder[0])
    assert isinstance(enc0[0], nvae.SymmetricInput)
    stem = enc0[1]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size) == (1, 32, (3, 3))  # init_stem
    kinds = ["down" if isinstance(c.skip, nvae.FactorizedReduce) else c.out_ch for c in enc0[2:]]
    # two blocks of 2 normal_pre cells and a down_pre cell (32 -> 64 -> 128), then the first group's 2 cells
    assert kinds == [32, 32, "down", 64, 64, "down", 128, 128]
    dec = list(m.decoder)
    ups = [isinstance(c.skip, nn.Sequential) for c in dec]
    assert ups == [True, False, False, True, False, False]  # up_post + 2 normal_post, twice
    assert [c.out_ch for c in dec] == [64, 64, 64, 32, 32, 32]
    assert all(c.branch[-1].fc[0].in_features == c.out_ch for c in dec)
    assert dec[1].branch[1].out_channels == 3 * 64  # post-processing cells expand by 3 (mconv_e3k5g0)
    head = m.decoder_head
    assert isinstance(head, nvae.ELUConv2d) and head.kernel_size == (3, 3) and head.out_channels == 1
    assert isinstance(m.encoder[10][0].skip, nvae.FactorizedReduce)  # down_enc between the two scales
    assert isinstance(m.layers[9].prior_net[0].skip, nn.Sequential)  # up_dec between them


def test_the_networks_read_the_input_in_minus_one_to_one():
    m = _reduced_mnist().eval()
    x = torch.bernoulli(torch.full((2, 1, 32, 32), 0.5))
    with torch.no_grad():
        assert torch.equal(m.encoder[0][0](x), 2 * x - 1)
        assert torch.allclose(m.encoder[0](x), nn.Sequential(*list(m.encoder[0])[1:])(2 * x - 1))


def test_official_heads_in_closed_form():
    m = _reduced_mnist().eval()
    layer, top = m.layers[0], m.layers[-1]
    torch.manual_seed(1)
    d = torch.randn(2, 16, 8, 8)
    h = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        # prior: dec_sampler = ELU + 1x1
        ph = layer.prior_head
        raw_p = F.conv2d(F.elu(h), ph.weight, ph.bias)
        p = layer.family.prior_from_raw(raw_p)
        assert torch.allclose(layer.family.prior_from_raw(ph(h)).mu, p.mu)
        # posterior: enc_sampler (3x3) of EncCombinerCell = d + 1x1(h); residual: N(mu_p + mu_q, log sig_p + log sig_q)
        assert isinstance(layer.post_from_d, nn.Identity) and isinstance(layer.post_act, nn.Identity)
        fh, qh = layer.post_from_h, layer.posterior_head
        raw_q = F.conv2d(d + F.conv2d(h, fh.weight, fh.bias), qh.weight, qh.bias, padding=1)
        q = layer.posterior(layer.context(d), p, h)
        d_mu, d_log_sigma = raw_q.chunk(2, 1)
        assert torch.allclose(q.mu, p.mu + d_mu, atol=1e-5)
        assert torch.allclose(q.sigma, p.sigma * d_log_sigma.exp(), rtol=1e-4)
        # top: enc0 (ELU, 1x1, ELU) then enc_sampler
        dt = torch.randn(2, 32, 4, 4)
        e0, s0 = top.posterior_head[1], top.posterior_head[3]
        raw_t = F.conv2d(F.elu(F.conv2d(F.elu(dt), e0.weight, e0.bias)), s0.weight, s0.bias, padding=1)
        assert torch.allclose(top.context(dt), raw_t, atol=1e-6)
    # DecCombinerCell: one weight-normalised 1x1 of cat(s, z) with one bias, one log g per output channel
    c = layer.combiner.conv
    assert c.in_channels == h.shape[1] + 4 and c.bias is not None
    assert c.parametrizations.weight[0].log_weight_norm.shape == (c.out_channels, 1, 1, 1)
    z = torch.randn(2, 4, 8, 8)
    assert torch.allclose(layer.transition(z, h), F.conv2d(torch.cat([h, z], 1), c.weight, c.bias), atol=1e-6)
    assert not hasattr(layer, "trans_from_z") and layer.trans_from_h is None


def test_prior_ftr0_is_learned_and_enters_the_top_combiner():
    m = _reduced_mnist()
    top = m.layers[-1]
    f = top.feature_map
    assert isinstance(f, nn.Parameter) and f.shape == (1, 32, 4, 4)
    assert any(p is f for p in m.parameters())
    assert 0 <= f.min() and f.max() < 1  # torch.rand, as prior_ftr0
    p, h_top = top.prior(None, 3)
    assert torch.equal(h_top, f.expand(3, 32, 4, 4))
    z = torch.randn(3, 4, 4, 4)
    c = top.combiner.conv
    expected = F.conv2d(torch.cat([h_top, z], 1), c.weight, c.bias)
    assert torch.allclose(top.transition(z, h_top), expected, atol=1e-6)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    m(x).loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    torch.manual_seed(2)
    a = m.eval().sample(2)
    with torch.no_grad():
        f.add_(1.0)
    torch.manual_seed(2)
    assert not torch.allclose(a, m.sample(2))  # samples read it
    assert build_model(presets.nvae_small(**presets.NVAE_SMALL_BEFORE)).layers[-1].feature_map is None


def test_defaults_keep_the_family_and_other_families_refuse_the_section():
    cfg = presets.nvae_small(**presets.NVAE_SMALL_BEFORE)
    assert cfg.nvae == type(cfg.nvae)()  # nothing of the official construction unless asked
    m = build_model(cfg)
    assert not any(hasattr(mod, "parametrizations") for mod in m.modules())
    with pytest.raises(ConfigError, match="nvae: options of block: nvae"):
        presets.vdvae_small(nvae={"weight_norm": True})
    with pytest.raises(ConfigError, match="pre_cells: must be >= 0"):
        presets.nvae_small(nvae={"pre_cells": -1})
    old = cfg.to_dict()
    del old["nvae"]  # a config saved before the section
    assert ModelConfig.from_dict(old) == cfg


def test_weight_normalised_model_saves_and_loads_the_same_function(tmp_path):
    m = _reduced_mnist().eval()
    x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
    with torch.no_grad():
        for mod in m.modules():
            if hasattr(mod, "parametrizations"):
                mod.parametrizations.weight[0].log_weight_norm.add_(0.5)
        m.layers[-1].feature_map.mul_(0.5)
    m.save_pretrained(tmp_path / "m")
    back = type(m).from_pretrained(tmp_path / "m").eval()
    torch.manual_seed(0)
    a = m(x).elbo
    torch.manual_seed(0)
    assert torch.equal(back(x).elbo, a)


def _official_nvae_params(
    *, c_enc, c_dec, in_ch, scales, groups, ada, cells, pre_blocks, pre_cells, post_blocks, post_cells, n_z, out_ch, nf
) -> dict[str, int]:
    """NVlabs/NVAE's ``AutoEncoder`` counted term by term from its construction (model.py ``__init__``,
    ``init_stem``, ``init_pre_process``, ``init_encoder_tower``, ``init_encoder0``, ``init_normal_sampler``,
    ``init_decoder_tower``, ``init_post_process``, ``init_image_conditional``; neural_operations.py ``Cell``,
    ``Conv2D`` (weight norm: one log g per output channel), ``BNSwishConv``, ``InvertedResidual``,
    ``FactorizedReduce``, ``SE``; neural_ar_operations.py ``ARInvertedResidual``, ``ELUConv``), arch
    ``res_mbconv``, ``--use_se``, 32x32 inputs. Returns the parameters of each part."""
    t: dict[str, int] = {}

    def add(k, v):
        t[k] = t.get(k, 0) + v

    def conv(i, o, k, bias=True, groups=1, wn=True):
        return o * (i // groups) * k * k + (o if bias else 0) + (o if wn else 0)

    def se(c):
        h = max(c // 16, 4)
        return c * h + h + h * c + c

    def res_cell(i, o):  # res_bnswish x 2 (BN + conv3x3), SE; FactorizedReduce skip when it doubles
        skip = 0 if i == o else 3 * conv(i, o // 4, 1) + conv(i, o - 3 * (o // 4), 1)
        return skip + 2 * i + conv(i, o, 3) + 2 * o + conv(o, o, 3) + se(o)

    def mb_cell(i, o, ex):  # InvertedResidual (no weight norm), SE; UpSample + 1x1 (no bias) skip when it halves
        h = i * ex
        skip = 0 if i == o else conv(i, o, 1, bias=False)
        ir = 2 * i + conv(i, h, 1, False, wn=False) + 2 * h + conv(h, h, 5, False, h, wn=False) + 2 * h
        return skip + ir + conv(h, o, 1, False, wn=False) + 2 * o + se(o)

    gps, n = [], groups
    for _ in range(scales):  # utils.groups_per_scale
        gps.append(n)
        n = max(1, n // 2) if ada else n
    top = 2 ** (pre_blocks + scales - 1)
    add("prior_ftr0", c_dec * top * (32 // top) ** 2)
    add("stem", conv(in_ch, c_enc, 3))
    mult = 1
    for _ in range(pre_blocks):
        c = c_enc * mult
        add("pre_process", (pre_cells - 1) * res_cell(c, c) + res_cell(c, 2 * c))
        mult *= 2
    for s in range(scales):
        for g in range(gps[s]):
            add("enc_cells", cells * res_cell(c_enc * mult, c_enc * mult))
            if not (s == scales - 1 and g == gps[s] - 1):
                add("combiner_enc", conv(c_dec * mult, c_enc * mult, 1))
        if s < scales - 1:
            add("down_enc", res_cell(c_enc * mult, 2 * c_enc * mult))
            mult *= 2
    add("enc0", conv(c_enc * mult, c_enc * mult, 1))
    m = mult
    for s in range(scales):
        for g in range(gps[scales - s - 1]):
            add("enc_sampler", conv(c_enc * m, 2 * n_z, 3))
            h = 6 * n_z  # PairedCellAR: two CellAR, each ARInvertedResidual(n_z, ex 6) and an ELUConv for mu
            add("nf_cells", nf * 2 * (h * n_z * 9 + h + h * 25 + h + n_z * h + n_z + n_z))
            if not (s == 0 and g == 0):
                add("dec_sampler", conv(c_dec * m, 2 * n_z, 1))
        m //= 2
    for s in range(scales):
        for g in range(gps[scales - s - 1]):
            c = c_dec * mult
            if not (s == 0 and g == 0):
                add("dec_cells", cells * mb_cell(c, c, 6))
            add("combiner_dec", conv(c + n_z, c, 1))
        if s < scales - 1:
            add("up_dec", mb_cell(c_dec * mult, c_dec * mult // 2, 6))
            mult //= 2
    for _ in range(post_blocks):
        c = c_dec * mult
        add("post_process", mb_cell(c, c // 2, 3) + (post_cells - 1) * mb_cell(c // 2, c // 2, 3))
        mult //= 2
    add("image_conditional", conv(c_dec * mult, out_ch, 3))
    return t


# the README's run commands (arguments not given take train.py's defaults)
_NVAE_MNIST_CMD = dict(
    c_enc=32, c_dec=32, in_ch=1, scales=2, groups=10, ada=True, cells=2, pre_blocks=2, pre_cells=3,
    post_blocks=2, post_cells=3, n_z=20, out_ch=1, nf=0,
)  # fmt: skip
_NVAE_CIFAR10_CMD = dict(
    c_enc=128, c_dec=128, in_ch=3, scales=1, groups=30, ada=False, cells=2, pre_blocks=1, pre_cells=2,
    post_blocks=1, post_cells=2, n_z=20, out_ch=100, nf=1,
)  # fmt: skip


@pytest.mark.parametrize(
    "name, command, official, hvae_count, flows",
    [
        ("nvae_mnist", _NVAE_MNIST_CMD, 33_363_134, 33_363_134, 0),
        ("nvae_cifar10", _NVAE_CIFAR10_CMD, 130_852_480, 130_852_480, 1_636_800),
    ],
)
def test_nvae_parameter_count_against_the_official_construction(name, command, official, hvae_count, flows):
    terms = _official_nvae_params(**command)
    assert sum(terms.values()) == official and terms["nf_cells"] == flows
    cfg = presets.get(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == hvae_count
    assert sum(p.numel() for layer in model.layers if layer.flow is not None for p in layer.flow.parameters()) == flows
    # every term: the combiners one weight-normalised 1x1 of cat(s, z) each, the flows' paired cells
    combiners = sum(
        p.numel() for layer in model.layers if layer.combiner is not None for p in layer.combiner.parameters()
    )
    assert combiners == terms["combiner_dec"]
    if name == "nvae_mnist":  # without one_combiner, W_z z + b + W_h s: one more log g per output channel and level
        with torch.device("meta"):
            two = build_model(presets.get(name, nvae={"one_combiner": False}))
        assert sum(p.numel() for p in two.parameters()) == official + sum(cfg.hidden_dims)


def _official_conv_mask(k, c_in, g_in, c_out, zero_diag, mirror):
    """neural_ar_operations.py ``create_conv_mask`` and ``channel_mask``, transcribed loop for loop."""
    m = (k - 1) // 2
    mask = torch.ones(c_out, c_in // g_in, k, k)
    mask[:, :, m:, :] = 0
    mask[:, :, m, :m] = 1
    if g_in == 1:
        ch = torch.ones(c_out, c_in)
        if c_out >= c_in:
            r = c_out // c_in
            for i in range(c_in):
                ch[i * r : (i + 1) * r, i + 1 :] = 0
                if zero_diag:
                    ch[i * r : (i + 1) * r, i : i + 1] = 0
        else:
            r = c_in // c_out
            for i in range(c_out):
                ch[i : i + 1, (i + 1) * r :] = 0
                if zero_diag:
                    ch[i : i + 1, i * r : (i + 1) * r] = 0
    else:
        ch = torch.zeros(c_out, 1) if zero_diag else torch.ones(c_out, 1)
    mask[:, :, m, m] = ch
    return torch.flip(mask, (2, 3)) if mirror else mask


@pytest.mark.parametrize("mirror", [False, True])
def test_flow_masks_are_the_official_ones_and_log_g_reads_the_masked_weight(mirror):
    torch.manual_seed(0)
    for k, c_in, groups, c_out, zero_diag in ((3, 4, 1, 24, True), (5, 24, 24, 24, False), (1, 24, 4, 4, False)):
        g = groups if groups == c_in else 1
        assert torch.equal(nvae.ar_mask(k, c_in, g, c_out, zero_diag=zero_diag, mirror=mirror),
                           _official_conv_mask(k, c_in, g, c_out, zero_diag, mirror))  # fmt: skip
    c = nvae.ar_conv(24, 4, 1, bias=True, zero_diag=False, mirror=mirror, init_coeff=0.1)  # CellAR's mu
    v = c.parametrizations.weight.original
    masked = v * nvae.ar_mask(1, 24, 1, 4, zero_diag=False, mirror=mirror)
    log_g = c.parametrizations.weight[1].log_weight_norm
    assert torch.allclose(log_g, torch.log(_row_norm(masked) + 1e-2) + math.log(0.1))  # ARConv2d, ELUConv init
    assert torch.allclose(c.weight, log_g.exp() * masked / (_row_norm(masked) + 1e-5))  # normalize_weight_jit


def _jacobian(f, z):
    """d f(z) / d z of a (1, C, h, w) map, (C h w, C h w), rows and columns in the order (position, channel)."""
    J = torch.autograd.functional.jacobian(lambda t: f(t.view(z.shape)).permute(0, 2, 3, 1).flatten(), z.flatten())
    C, h, w = z.shape[1:]
    order = torch.arange(C * h * w).view(C, h, w).permute(1, 2, 0).flatten()  # (position, channel) -> C-major index
    return J[:, order]


@pytest.mark.parametrize("mirror", [False, True])
def test_flow_cell_is_autoregressive_its_jacobian_unit_triangular(mirror):
    torch.manual_seed(0)
    cell = nvae.ARCell(3, mirror=mirror).double()
    with torch.no_grad():  # leave the init's 0.1 on mu: larger weights make every dependency visible
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    J = _jacobian(cell, z)
    if mirror:  # the mirrored cell runs the positions in reverse raster order, the channels in the same order
        n = J.shape[0]
        pos = torch.arange(n).view(16, 3).flip(0).flatten()
        J = J[pos][:, pos]
    assert torch.equal(J.diagonal(), torch.ones(J.shape[0], dtype=J.dtype))  # z - mu(z): mu reads no z_i itself
    assert torch.equal(J.triu(1), torch.zeros_like(J))  # nor anything after it
    assert (J.tril(-1).abs() > 1e-6).float().mean() > 0.4  # and much of what comes before (its receptive field)


def test_paired_flow_preserves_volume_and_log_q_is_q0s_log_density_of_the_inverted_sample():
    torch.manual_seed(0)
    cfg = presets.nvae_cifar10(latent_dims=[3] * 2, hidden_dims=[16] * 2, strides=[4, 1], depth=1)
    assert cfg.nvae.flows == 1
    model = build_model(cfg).double().eval()
    flow = model.layers[0].flow
    z0 = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda t: flow(t.view(z0.shape))[0].flatten(), z0.flatten())
    assert abs(torch.linalg.slogdet(J).logabsdet.item()) < 1e-10  # two triangular cells in two orders: |det| = 1
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ctxs = model._bottom_up(x)
        torch.manual_seed(1)
        run = model._infer(None, ctxs=ctxs)
    for l, layer in enumerate(model.layers):
        q, z = run.qs[l], run.zs[l]
        # invert z' = z0 - mu_2(z1), z1 = z0 - mu_1(z0) by fixed points: exact after one pass per dimension
        w = z.clone()
        for cell in reversed(layer.flow.cells):
            y = w.clone()
            for _ in range(w[0].numel() + 1):
                y = w + (y - cell(y))
            w = y
        z_0 = w
        assert not torch.allclose(z_0, z, atol=1e-3)  # the flow moved the sample
        closed = -0.5 * ((z_0 - q.mu) / q.sigma) ** 2 - torch.log(q.sigma) - 0.5 * math.log(2 * math.pi)
        assert torch.allclose(run.log_q(l), closed, atol=1e-8)
    kl = model._kl_terms(run)  # no closed form: log q(z') - log p(z') of the flowed sample
    for l in range(2):
        assert torch.allclose(kl[l], run.log_q(l) - run.ps[l].log_prob(run.zs[l]), atol=1e-10)
    with torch.no_grad():
        lw = model._log_weights(x, run)  # the IW bound's weights: log p(x, z') - log q(z') of the flowed sample
        log_px = model._decode_state(run.state).log_prob(x)
    assert torch.allclose(lw, log_px - torch.stack([k.flatten(1).sum(1) for k in kl]).sum(0), atol=1e-6)


def test_flows_need_a_gaussian_top_down_posterior_and_refuse_given_samples():
    with pytest.raises(ConfigError, match="nvae.flows"):
        presets.nvae_cifar10(latent_dims=[3] * 2, hidden_dims=[16] * 2, strides=[4, 1], inference="bottom_up",
                             residual_posterior=False)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(presets.nvae_cifar10(latent_dims=[3] * 2, hidden_dims=[16] * 2, strides=[4, 1], depth=1))
    x = torch.rand(2, 3, 32, 32)
    ctxs = model._bottom_up(x)
    zs = model._infer(None, ctxs=ctxs).zs
    with pytest.raises(ValueError, match="flow's inverse"):
        model._top_down(2, ctxs=ctxs, zs_given=zs)


def test_nvae_presets_set_the_official_construction():
    # the run commands' --num_preprocess_cells = --num_postprocess_cells: 3 (MNIST), 2 (CIFAR-10)
    for name, cells in (("nvae_mnist", 3), ("nvae_cifar10", 2)):
        o = presets.get(name).nvae
        assert o.flows == (1 if name == "nvae_cifar10" else 0)  # --num_nf 1 (CIFAR-10), 0 (MNIST)
        flags = (o.leading_bn, o.weight_norm, o.residual_resampling, o.official_heads, o.learned_top, o.symmetric_input)
        assert flags == (True,) * 6 and (o.pre_cells, o.post_cells) == (cells, cells)


# the model section a run of nvae_small wrote before the preset followed NVAE's code (its config.yaml holds the
# resolved model; saved models hold the same in config.json): no nvae section, the fields that were not defaults
_OLD_NVAE_SMALL = dict(
    block="nvae", activation="swish", batch_norm=True, inference="top_down", generative_skip=True,
    residual_posterior=True, kl_balancing=True, data_shape=[1, 28, 28], latent_dims=[8, 8, 8],
    hidden_dims=[32, 32, 64], strides=[4, 1, 2], depth=1, likelihood="bernoulli",
    spectral={"reg": 0.01, "reg_init": 1.0, "reg_warmup_steps": 500},
)  # fmt: skip


def test_small_preset_follows_nvae_and_old_runs_load_as_they_were(tmp_path):
    new = presets.nvae_small()
    o = new.nvae
    assert (o.leading_bn, o.weight_norm, o.residual_resampling, o.official_heads, o.learned_top) == (True,) * 5
    assert (o.symmetric_input, o.pre_cells, o.post_cells, o.flows) == (True, 1, 1, 0)
    assert (new.state_activation, new.scale_param, new.bn_scale_penalty, new.spectral.over) == (
        "linear",
        "softclamp",
        True,
        "conv",
    )
    old = ModelConfig.from_dict(_OLD_NVAE_SMALL)
    assert old == presets.nvae_small(**presets.NVAE_SMALL_BEFORE)  # the benchmark's "before" is the old model
    path = tmp_path / "config.yaml"  # a run directory's config as the old preset wrote it
    path.write_text(json.dumps({"model": _OLD_NVAE_SMALL, "data": {"source": "fashion_mnist", "flatten": False}}))
    from hvae.runconfig import load_run_config

    cfg, _ = load_run_config(path)
    assert cfg.model == old
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    assert sum(p.numel() for p in model.parameters()) == 214_245  # the old nvae_small's count
    model.save_pretrained(tmp_path / "saved")
    back = HierarchicalVAE.from_pretrained(tmp_path / "saved").eval()
    assert back.config == old and not any("log_weight_norm" in k for k in back.state_dict())
    x = torch.rand(2, 1, 28, 28).round()
    torch.manual_seed(1)
    a = model(x).elbo
    torch.manual_seed(1)
    assert torch.equal(back(x).elbo, a)


def test_aggressive_encoder_refuses_a_posterior_with_a_flow_before_training():
    from types import SimpleNamespace

    import hvae.aggressive as aggressive

    model = build_model(presets.nvae_cifar10(latent_dims=[3] * 2, hidden_dims=[16] * 2, strides=[4, 1], depth=1))
    job = SimpleNamespace(
        config=SimpleNamespace(train=SimpleNamespace(aggressive_encoder=True)),
        ctx=SimpleNamespace(distributed=False),
        model=model,
        state={"step": 0},
    )
    with pytest.raises(ConfigError, match="nvae.flows: 0 or train.aggressive_encoder: false"):
        aggressive.start(job)
