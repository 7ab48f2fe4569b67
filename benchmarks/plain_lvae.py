"""The yardstick: a plain eager Ladder VAE for 784-pixel binary images, written the way a paper's code is.

Same mathematics as ``hvae.presets.lvae_mnist()`` (5 levels 64-32-16-8-4, hidden 512-256-128-64-32,
two hidden layers per mapping, batch norm, leaky ReLU 0.1, variances sigma^2 = softplus(.) + 1e-6,
precision-weighted merge, analytic KL, Bernoulli likelihood), with separate mean and variance heads and
no reuse across importance samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LATENT = [64, 32, 16, 8, 4]
HIDDEN = [512, 256, 128, 64, 32]


def mlp(i, h):
    return nn.Sequential(
        nn.Linear(i, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.1), nn.Linear(h, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.1)
    )


class Gauss(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.mu, self.var = nn.Linear(i, o), nn.Linear(i, o)

    def forward(self, h):
        return self.mu(h), F.softplus(self.var(h)) + 1e-6  # mean and variance


def log_normal(z, mu, var):
    return -0.5 * (math.log(2 * math.pi) + torch.log(var) + (z - mu) ** 2 / var)


class PlainLVAE(nn.Module):
    def __init__(self, D=784):
        super().__init__()
        ins = [D] + HIDDEN[:-1]
        self.enc = nn.ModuleList(mlp(i, h) for i, h in zip(ins, HIDDEN))
        self.enc_heads = nn.ModuleList(Gauss(h, z) for h, z in zip(HIDDEN, LATENT))
        self.dec = nn.ModuleList(mlp(LATENT[l + 1], HIDDEN[l + 1]) for l in range(4))
        self.dec_heads = nn.ModuleList(Gauss(HIDDEN[l + 1], LATENT[l]) for l in range(4))
        self.out = nn.Sequential(mlp(LATENT[0], HIDDEN[0]), nn.Linear(HIDDEN[0], D))

    def forward(self, x, beta=1.0):
        """Returns (loss, elbo per example, log weights per example)."""
        h, bu = x, []
        for enc, head in zip(self.enc, self.enc_heads):
            h = enc(h)
            bu.append(head(h))
        mu, var = bu[-1]
        z = mu + var.sqrt() * torch.randn_like(mu)
        kl = 0.5 * (var + mu**2 - 1 - torch.log(var)).sum(1)
        log_w = log_normal(z, 0, torch.ones_like(z)).sum(1) - log_normal(z, mu, var).sum(1)
        for l in reversed(range(4)):
            mu_p, var_p = self.dec_heads[l](self.dec[l](z))
            mu_b, var_b = bu[l]
            prec = 1 / var_p + 1 / var_b
            var_q = 1 / prec
            mu_q = (mu_p / var_p + mu_b / var_b) * var_q
            z = mu_q + var_q.sqrt() * torch.randn_like(mu_q)
            kl = kl + 0.5 * (torch.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1).sum(1)
            log_w = log_w + log_normal(z, mu_p, var_p).sum(1) - log_normal(z, mu_q, var_q).sum(1)
        logits = self.out(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        elbo = log_px - kl
        loss = -(log_px - beta * kl).mean()
        return loss, elbo, log_px + log_w

    @torch.no_grad()
    def log_likelihood(self, x, num_samples=1000, chunk=100):
        """IW bound, re-running the whole network for every chunk of samples (the plain way)."""
        parts = []
        for s in range(0, num_samples, chunk):
            k = min(chunk, num_samples - s)
            _, _, lw = self(x.repeat(k, 1))
            parts.append(lw.view(k, -1))
        lw = torch.cat(parts)
        return torch.logsumexp(lw, 0) - math.log(num_samples)
