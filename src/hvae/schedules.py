"""Step schedules: pure functions of (config, step), one home for every quantity that moves with training.

* :func:`beta`: the KL weight's linear warm-up (Sønderby et al. 2016) or cyclical annealing (Fu et al. 2019),
  from a :class:`~hvae.config.ModelConfig`;
* :func:`spectral_weight`: NVAE's spectral-regularisation weight lambda, log-linear over its warm-up;
* :func:`gumbel_temperature`: the relaxation temperature of discrete latents, geometric over its anneal;
* :func:`learning_rate`: warm-up, then constant, cosine or per-epoch exponential decay, from a
  :class:`~hvae.runconfig.TrainConfig`.

The model calls the first three with its ``step`` buffer; the trainer calls :func:`learning_rate` and passes
:func:`beta` of its own step count. A tensor ``step`` (the model's buffer) gives a tensor on its device where
a schedule moves, never read back to the host (a read would make the host wait for the device).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def beta(cfg, step: int | Tensor) -> float:
    """KL weight at a training step: linear warm-up from 0 to ``cfg.beta`` over ``cfg.kl_warmup_steps``
    (Sønderby et al. 2016), then ``cfg.beta``; or, with ``cfg.kl_cycles``, cyclical annealing (Fu et al. 2019):
    ``kl_cycles`` cycles of ``kl_cycle_steps`` steps, in each beta rising linearly from 0 over the first
    ``kl_cycle_ramp`` of the cycle and then held at ``cfg.beta``; after the cycles, ``cfg.beta``."""
    if getattr(cfg, "kl_cycles", 0) and float(step) < cfg.kl_cycles * cfg.kl_cycle_steps:
        tau = (float(step) % cfg.kl_cycle_steps) / cfg.kl_cycle_steps  # position in the cycle, [0, 1)
        return cfg.beta * min(1.0, tau / cfg.kl_cycle_ramp)
    n = cfg.kl_warmup_steps
    if n == 0:
        return cfg.beta
    # NVAE's utils.kl_coeff: held at the floor for kl_const_steps, then linear, never below the floor
    return cfg.beta * max(min(1.0, (float(step) - cfg.kl_const_steps) / n), cfg.kl_warmup_floor)


def spectral_coefficient(step: int | Tensor, final: float, initial: float, warmup_steps: int) -> float | Tensor:
    """NVAE's annealing of lambda: log-linear from ``initial`` to ``final`` over ``warmup_steps`` (the KL
    warm-up's schedule in NVAE), then ``final``. ``warmup_steps = 0`` or ``initial <= 0`` gives ``final``."""
    if final <= 0:
        return 0.0
    if warmup_steps <= 0 or initial <= 0:
        return final
    if isinstance(step, Tensor):  # on the device: no host sync
        t = (step.float() / warmup_steps).clamp(max=1.0)
        return torch.exp((1 - t) * math.log(initial) + t * math.log(final))
    s = min(1.0, float(step) / warmup_steps)
    return math.exp((1 - s) * math.log(initial) + s * math.log(final))


def spectral_weight(cfg, step: int | Tensor) -> float | Tensor:
    """The spectral-regularisation weight lambda of a :class:`~hvae.config.ModelConfig` at a training step
    (:func:`spectral_coefficient` of ``spectral.reg``, ``spectral.reg_init``, ``spectral.reg_warmup_steps``)."""
    return spectral_coefficient(step, cfg.spectral.reg, cfg.spectral.reg_init, cfg.spectral.reg_warmup_steps)


def gumbel_temperature(cfg, step: int | Tensor) -> float | Tensor:
    """Relaxation temperature of discrete latents at a training step: geometric from
    ``gumbel.temperature_start`` to ``gumbel.temperature`` over ``gumbel.anneal_steps`` (Jang et al. 2017
    anneal exponentially), then constant."""
    if cfg.gumbel.anneal_steps == 0:
        return cfg.gumbel.temperature
    if isinstance(step, Tensor):
        frac = (step.float() / cfg.gumbel.anneal_steps).clamp(max=1.0)
    else:
        frac = min(1.0, float(step) / cfg.gumbel.anneal_steps)
    return cfg.gumbel.temperature_start * (cfg.gumbel.temperature / cfg.gumbel.temperature_start) ** frac


def learning_rate(cfg, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Learning rate of a :class:`~hvae.runconfig.TrainConfig` at ``step``: linear warm-up, then constant,
    cosine or per-epoch exponential decay."""
    lr = cfg.lr
    if cfg.lr_warmup_steps and step < cfg.lr_warmup_steps:
        return lr * (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_decay == "cosine":
        t = min(1.0, (step - cfg.lr_warmup_steps) / max(1, total_steps - cfg.lr_warmup_steps))
        return cfg.lr_min + 0.5 * (lr - cfg.lr_min) * (1 + math.cos(math.pi * t))
    if cfg.lr_decay == "exponential":
        return lr * cfg.lr_decay_rate ** (step // max(1, steps_per_epoch))
    return lr
