"""hvae.schedules: every step schedule as a pure function of (config, step), against its closed form."""

import math

import pytest
import torch

import hvae
from hvae import schedules
from hvae.runconfig import TrainConfig


def _cfg(**overrides):
    base = dict(data_shape=[12], latent_dims=[4, 2], hidden_dims=[16, 8], depth=1)
    return hvae.ModelConfig.from_dict({**base, **overrides})


def test_beta_warms_up_linearly_then_holds():
    cfg = _cfg(beta=0.8, kl_warmup_steps=5)
    assert [schedules.beta(cfg, s) for s in (0, 1, 2, 5, 100)] == pytest.approx([0.0, 0.16, 0.32, 0.8, 0.8])
    assert schedules.beta(cfg, torch.tensor(2)) == pytest.approx(0.32)  # the model's step buffer
    assert schedules.beta(_cfg(beta=0.7), 3) == 0.7  # no warm-up


def test_spectral_weight_is_log_linear_over_its_warm_up():
    cfg = _cfg(spectral={"reg": 0.01, "reg_init": 10.0, "reg_warmup_steps": 100})
    assert schedules.spectral_weight(cfg, 0) == pytest.approx(10.0)
    assert schedules.spectral_weight(cfg, 25) == pytest.approx(10.0**0.75 * 0.01**0.25)
    assert schedules.spectral_weight(cfg, 10**6) == pytest.approx(0.01)
    on_device = schedules.spectral_weight(cfg, torch.tensor(25))
    assert isinstance(on_device, torch.Tensor) and float(on_device) == pytest.approx(10.0**0.75 * 0.01**0.25)
    assert schedules.spectral_weight(_cfg(), 10) == 0.0  # no spectral regularisation


def test_gumbel_temperature_anneals_geometrically_then_holds():
    cfg = _cfg(
        latent_types=["categorical", "gaussian"],
        gumbel={"temperature_start": 1.0, "temperature": 0.25, "anneal_steps": 10},
    )
    assert schedules.gumbel_temperature(cfg, 5) == pytest.approx(0.5)  # sqrt(1 * 0.25)
    assert float(schedules.gumbel_temperature(cfg, torch.tensor(5))) == pytest.approx(0.5)
    assert schedules.gumbel_temperature(cfg, 0) == pytest.approx(1.0)
    assert schedules.gumbel_temperature(cfg, 30) == pytest.approx(0.25)
    model = hvae.build_model(cfg)
    model.step.fill_(5)
    assert float(model.gumbel_temperature()) == pytest.approx(0.5)  # the model reads its own step


def test_learning_rate_warm_up_then_cosine_or_exponential_decay():
    tc = TrainConfig(lr=1e-3, lr_warmup_steps=4, lr_decay="cosine", lr_min=1e-5)
    assert schedules.learning_rate(tc, 0, 10, 104) == pytest.approx(2.5e-4)  # (step + 1) / warm-up
    assert schedules.learning_rate(tc, 4, 10, 104) == pytest.approx(1e-3)
    assert schedules.learning_rate(tc, 54, 10, 104) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way
    assert schedules.learning_rate(tc, 104, 10, 104) == pytest.approx(1e-5)
    tc = TrainConfig(lr=1e-3, lr_decay="exponential", lr_decay_rate=0.5)
    assert schedules.learning_rate(tc, 25, 10, 100) == pytest.approx(1e-3 * 0.25)  # epoch 2
    assert schedules.learning_rate(TrainConfig(lr=3e-4), 99, 10, 100) == 3e-4
    assert math.isclose(schedules.learning_rate(TrainConfig(lr=3e-4), 0, 10, 100), 3e-4)
