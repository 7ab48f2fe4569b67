"""A KL target spread over the levels (issue #32): ``free_bits_levels``, a minimum per level, with free bits per
level or a KL target per sequence; its gradients against hand computations."""

from __future__ import annotations

import pytest
import torch

from hvae.config import ModelConfig
from hvae.configbase import ConfigError
from hvae.data.text import ByteTokenizer
from hvae.objectives import kl_loss
from tests.test_text import _SENTENCES, _remedy_model, _token_batch


def _levels():
    # two examples, two levels of two units: per example, level 1 holds 10 and 0 nats, level 2 holds 1 and 3
    z1 = torch.tensor([[4.0, 6.0], [0.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[0.5, 0.5], [1.0, 2.0]], requires_grad=True)
    return z1, z2


def test_per_sequence_target_with_level_minima_frees_each_level_below_its_minimum():
    cfg = ModelConfig(latent_dims=[4, 2], hidden_dims=[8, 4], free_bits_mode="sequence", free_bits=6.0,
                      free_bits_levels=[2.0, 2.0])  # fmt: skip
    z1, z2 = _levels()
    loss = kl_loss(cfg, [z1, z2], beta=0.5)
    # example 0: max(10, 2) + max(1, 2) = 12 > 6; example 1: max(0, 2) + max(3, 2) = 5 < 6, floored at 6
    assert loss.item() == pytest.approx(0.5 * (12.0 + 6.0) / 2)
    loss.backward()
    # d loss / d KL: beta / B where the level is above its minimum and the sequence above its target, else 0
    assert z1.grad.tolist() == [[0.25, 0.25], [0.0, 0.0]]
    assert z2.grad.tolist() == [[0.0, 0.0], [0.0, 0.0]]  # level 2 of example 0 (1 nat) is below its minimum
    z1, z2 = _levels()
    lower = cfg.replace(free_bits=4.0)  # example 1's 5 nats are now above the target: its level 2 (3 > 2) pays
    kl_loss(lower, [z1, z2], beta=0.5).backward()
    assert z1.grad.tolist() == [[0.25, 0.25], [0.0, 0.0]] and z2.grad.tolist() == [[0.0, 0.0], [0.25, 0.25]]


def test_level_minima_with_free_bits_per_level_floor_each_levels_batch_mean_at_the_larger():
    # batch means: level 1 5 nats, level 2 2 nats; floors max(1, 6) = 6 and max(1, 0) = 1
    cfg = ModelConfig(latent_dims=[4, 2], hidden_dims=[8, 4], free_bits=1.0, free_bits_levels=[6.0, 0.0])
    z1, z2 = _levels()
    loss = kl_loss(cfg, [z1, z2], beta=1.0)
    assert loss.item() == pytest.approx(6.0 + 2.0)
    loss.backward()
    assert z1.grad.abs().sum() == 0 and z2.grad.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    # without minima: the same loss as free_bits alone (5 + 2)
    assert kl_loss(cfg.replace(free_bits_levels=[]), list(_levels()), 1.0).item() == pytest.approx(7.0)


def test_level_minima_need_one_non_negative_number_per_level_and_no_channel_mode():
    base = ModelConfig(latent_dims=[4, 2], hidden_dims=[8, 4])
    with pytest.raises(ConfigError, match=r"one minimum >= 0 nats per latent level \(2\)"):
        base.replace(free_bits_levels=[1.0])
    with pytest.raises(ConfigError, match="free_bits_levels"):
        base.replace(free_bits_levels=[1.0, -1.0])
    with pytest.raises(ConfigError, match="set free_bits_mode: layer or sequence"):
        base.replace(free_bits_levels=[1.0, 1.0], free_bits_mode="channel", free_bits=0.5)
    assert ModelConfig.from_dict(base.replace(free_bits_levels=[1.0, 0.5]).to_dict()).free_bits_levels == [1.0, 0.5]


def test_a_models_loss_spreads_the_sequence_target_over_its_levels():
    x = _token_batch(ByteTokenizer(), _SENTENCES, 12)
    # the untrained levels hold about 0.65, 0.45 and 0.26 nats per example: z_1 and z_2 near their minima, z_3 below,
    # two examples' floored sums below the target and two above
    minima, target = [0.65, 0.3, 1.0], 2.12
    model = _remedy_model(free_bits=target, free_bits_mode="sequence", free_bits_levels=minima)
    torch.manual_seed(0)
    out = model(x, beta=0.5)
    total = sum(k.clamp_min(m) for k, m in zip(out.kl, minima))  # out.kl: (B,) per level
    assert (total < target).any() and (total > target).any()
    expected = -out.log_px.mean() + 0.5 * total.clamp_min(target).mean()
    assert torch.allclose(out.loss, expected)
    without = -out.log_px.mean() + 0.5 * sum(out.kl).clamp_min(target).mean()  # the target alone
    assert not torch.allclose(out.loss, without)
    assert torch.allclose(out.elbo, out.log_px - sum(out.kl))  # the ELBO reported is untouched
