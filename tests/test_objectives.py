"""The loss's options beside the ELBO, against hand computations (hvae.objectives)."""

import pytest
import torch

from hvae.config import ModelConfig
from hvae.objectives import balancing_weights, free_bits, kl_loss

# two examples, two channels of two positions: per example 1+2+3+4 = 10 and 0; channel sums per example
# (3, 7) and (0, 0), batch means (1.5, 3.5)
KL = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])


def test_free_bits_per_level_clamp_the_batch_mean_of_the_level():
    assert free_bits(KL, 0.0, "layer").item() == pytest.approx(5.0)
    assert free_bits(KL, 4.0, "layer").item() == pytest.approx(5.0)
    assert free_bits(KL, 6.0, "layer").item() == pytest.approx(6.0)


def test_free_bits_per_channel_clamp_each_channels_batch_mean():
    assert free_bits(KL, 2.0, "channel").item() == pytest.approx(2.0 + 3.5)
    assert free_bits(KL, 0.0, "channel").item() == pytest.approx(5.0)  # no free nats: the plain KL


def test_balancing_weights_follow_the_kl_per_latent_element_and_have_mean_one():
    kl_elem = [KL, KL[:, :1]]  # 4 and 2 elements per example, both at one resolution (2,): two levels there
    kl = torch.tensor([4.0, 4.0])
    w = balancing_weights(kl, kl_elem)
    # (4 + 0.01) * 2 / 4 and (4 + 0.01) * 2 / 2, normalised to mean 1
    assert w.tolist() == pytest.approx([2 / 3, 4 / 3])


def test_kl_loss_is_beta_times_the_freed_levels_and_balances_only_during_warm_up():
    cfg = ModelConfig(free_bits=6.0)
    assert kl_loss(cfg, [KL, KL], 0.5).item() == pytest.approx(0.5 * (6.0 + 6.0))
    balanced = ModelConfig(kl_balancing=True)
    small = KL[:, :1]  # KL 1.5 per example over 2 elements, at the same resolution as KL: per example
    w = torch.tensor([(5.0 + 0.01) / 4 * 2, (1.5 + 0.01) / 2 * 2])
    w = w / w.mean()
    assert kl_loss(balanced, [KL, small], 0.5).item() == pytest.approx(0.5 * (5.0 * w[0] + 1.5 * w[1]).item())
    assert kl_loss(balanced, [KL, small], 1.0).item() == pytest.approx(6.5)  # beta reached: no balancing
