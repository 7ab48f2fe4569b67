"""Spectral regularisation (NVAE, Vahdat & Kautz 2020, sec. 3.2): lambda * sum_i sigma_max(W_i) over
every convolution and linear weight, each weight seen as a matrix ``(out, in * kh * kw)``.

The largest singular value is tracked by power iteration (Miyato et al. 2018) with persistent vectors
``u`` (out,) and ``v`` (in,) kept as buffers, so a couple of iterations per training step suffice and a
saved model resumes where it stopped. Weights of one matrix shape are iterated together in one batched
product, as in NVAE's ``spectral_norm_parallel``. sigma = u^T W v carries the gradient to W; u and v do not.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SpectralConfig

SEED_ITERATIONS = 20  # iterations the first time, from random u, v
STEP_ITERATIONS = 1  # iterations per training step after that (NVAE's runs: 4, set by the model's config)
_EPS = 1e-12


def _weighted_modules(model: nn.Module, over: str = "all") -> list[tuple[str, nn.Module]]:
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    kinds = convs if over == "conv" else (*convs, nn.Linear)  # NVAE's all_conv_layers: convolutions only
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and m.weight is not None]


def _weight(model: nn.Module, name: str) -> Tensor:
    """The weight of the submodule ``name`` (a convolution, linear layer or affine batch norm: a tensor)."""
    return cast(Tensor, model.get_submodule(name).weight)


class SpectralNorms(nn.Module):
    """Power-iteration state for the weights of ``model`` (the modules that exist when this is built).

    Call ``norms(model)`` to get sigma_max of every weight, (N,) in the order of :attr:`names`; in
    training (``update=True``) the stored ``u``, ``v`` advance. The model is passed at call time (not stored)
    so this module is not a second parent of the model's layers.

    The model's config (when it has one) sets the iterations per step and at the first
    (``spectral.iterations``, ``spectral.seed_iterations``; NVAE: 4 and 40), the weights covered
    (``spectral.over``) and whether NVAE's batch-norm penalty max_c |gamma_c| of every batch norm is appended
    to the returned vector (``bn_scale_penalty``: NVAE adds it at the spectral term's coefficient).
    """

    seeded: Tensor  # the buffer registered in __init__ (declared for the type checker)

    def __init__(self, model: nn.Module):
        super().__init__()
        cfg = getattr(model, "config", None)  # any nn.Module may be measured; only an hvae model has a config
        spectral = (
            SpectralConfig(iterations=STEP_ITERATIONS, seed_iterations=SEED_ITERATIONS) if cfg is None else cfg.spectral
        )
        self.step_iterations = spectral.iterations
        self.seed_iterations = spectral.seed_iterations
        self.batch_norms = (
            [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
            if getattr(cfg, "bn_scale_penalty", False)
            else []
        )
        groups: dict[str, list[str]] = {}
        shapes: dict[str, tuple[int, int]] = {}
        for name, m in _weighted_modules(model, spectral.over):
            weight = cast(Tensor, m.weight)  # a convolution's or linear layer's (checked in _weighted_modules)
            out = weight.shape[0]
            fan_in = weight[0].numel()
            key = f"{out}x{fan_in}"
            groups.setdefault(key, []).append(name)
            shapes[key] = (out, fan_in)
        self.groups = groups
        self.names = [n for names in groups.values() for n in names]
        g = torch.Generator().manual_seed(0)
        for key, names in groups.items():
            out, fan_in = shapes[key]
            self.register_buffer(f"u_{key}", F.normalize(torch.randn(len(names), out, generator=g), dim=1))
            self.register_buffer(f"v_{key}", F.normalize(torch.randn(len(names), fan_in, generator=g), dim=1))
        self.register_buffer("seeded", torch.zeros((), dtype=torch.bool))
        # the host's copy of ``seeded`` once it is True (it stays True): reading the buffer at every step
        # would make the host wait for the device; a loaded state may differ, so loading forgets it
        self._seeded_seen = False
        self._register_load_state_dict_pre_hook(self._forget_seeded)

    def _forget_seeded(self, *args, **kwargs) -> None:
        self._seeded_seen = False

    def forward(self, model: nn.Module, iterations: int | None = None, update: bool = True) -> Tensor:
        """sigma_max of every weight, (N,) float32, differentiable w.r.t. the weights (then, with
        ``bn_scale_penalty``, max |gamma| of every batch norm)."""
        if iterations is None:
            self._seeded_seen = self._seeded_seen or bool(self.seeded)
            iterations = self.step_iterations if self._seeded_seen else self.seed_iterations
        sigmas = []
        for key, names in self.groups.items():
            W = torch.stack([_weight(model, n).reshape(-1, 1) for n in names])
            out = getattr(self, f"u_{key}").shape[1]
            W = W.view(len(names), out, -1).float()  # (n, out, in)
            u, v = getattr(self, f"u_{key}"), getattr(self, f"v_{key}")
            with torch.no_grad():
                Wd = W.detach()
                for _ in range(iterations):
                    v = F.normalize(torch.bmm(u.unsqueeze(1), Wd).squeeze(1), dim=1, eps=_EPS)  # W^T u
                    u = F.normalize(torch.bmm(Wd, v.unsqueeze(2)).squeeze(2), dim=1, eps=_EPS)  # W v
                if update:
                    getattr(self, f"u_{key}").copy_(u)
                    getattr(self, f"v_{key}").copy_(v)
            # sigma = u^T W v
            sigmas.append(torch.bmm(u.unsqueeze(1), torch.bmm(W, v.unsqueeze(2))).view(-1))
        if update:
            self.seeded.fill_(True)
        # NVAE's batchnorm_loss: max_c |gamma_c| per batch norm (model.py), penalised at the same lambda
        sigmas += [_weight(model, n).abs().max().float().view(1) for n in self.batch_norms]
        return torch.cat(sigmas) if sigmas else torch.zeros(0)
