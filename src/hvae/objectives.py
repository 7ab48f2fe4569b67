"""The training objective's options beside the ELBO: free bits and KL balancing.

They change the loss a model minimises (:attr:`hvae.ModelOutput.loss`), never the ELBO it reports. Each
takes the elementwise KL of one level, ``kl_elem[l]`` of shape (B, *latent_shape) in nats, bottom to top:

    loss_KL = beta * sum_l gamma_l * max(lambda, E_batch[KL_l])        (per level, or per channel)
    loss_KL = beta * E_batch[max(lambda, sum_l KL_l)]                   (free_bits_mode: sequence)

with gamma_l = 1 unless KL balancing is on during the warm-up.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig


def free_bits(kl_elem: Tensor, nats: float, mode: str) -> Tensor:
    """One level's KL, batch mean (a scalar, nats), with ``nats`` free: for the whole level (``mode``
    ``"layer"``) or for each channel (``"channel"``, Kingma et al. 2016: a channel's batch-averaged KL
    below ``nats`` has no gradient). ``kl_elem``: (B, *latent_shape); ``nats`` 0 leaves the KL as it is."""
    if nats > 0 and mode == "channel":
        per_ch = kl_elem.flatten(2).sum(2).mean(0) if kl_elem.dim() > 2 else kl_elem.mean(0)  # (C,)
        return per_ch.clamp_min(nats).sum()
    kl = kl_elem.flatten(1).sum(1).mean()
    return kl.clamp_min(nats) if nats > 0 else kl


def balancing_weights(kl: Tensor, kl_elem: list[Tensor]) -> Tensor:
    """NVAE's KL balancing: level l's weight is its share of the KL per latent element, times the number of
    levels at its resolution (NVAE's groups per scale), normalised to mean 1, so no level is starved during
    the warm-up. ``kl``: (L,) the levels' KL; returns (L,) constants (no gradient)."""
    # the sizes divide as Python numbers (a tensor of them would be a host-to-device copy, which waits for
    # the device, at every step of the warm-up)
    spatial = [tuple(k.shape[2:]) for k in kl_elem]
    gamma = torch.stack(
        [(kl[i].detach().abs() + 0.01) * spatial.count(spatial[i]) / k[0].numel() for i, k in enumerate(kl_elem)]
    )
    return gamma / gamma.mean()


def kl_loss(cfg: ModelConfig, kl_elem: list[Tensor], beta: float) -> Tensor:
    """The KL part of the training loss (a scalar, nats, batch mean): free bits per level, KL balancing
    while ``beta`` is below ``cfg.beta``, times ``beta``. ``kl_elem``: L tensors (B, *latent_shape).
    With ``free_bits_mode: sequence`` the floor is a KL target per example: the levels' KL summed, floored at
    ``free_bits`` nats, then batch-averaged."""
    if cfg.free_bits > 0 and cfg.free_bits_mode == "sequence":
        total = sum(k.flatten(1).sum(1) for k in kl_elem)
        return beta * torch.as_tensor(total).clamp_min(cfg.free_bits).mean()
    kl = torch.stack([free_bits(k, cfg.free_bits, cfg.free_bits_mode) for k in kl_elem])
    if cfg.kl_balancing and beta < cfg.beta:
        kl = kl * balancing_weights(kl, kl_elem)
    return beta * kl.sum()


def discrete_aux(layers, qs) -> tuple[Tensor | float, dict]:
    """The commitment losses of vector-quantised levels (added to the loss, never to the ELBO) and their
    codebook perplexities for this batch: ``(total, {"commitment": {l: scalar}, "perplexity": {l: scalar}})``."""
    total: Tensor | float = 0.0
    aux: dict[str, dict[int, Tensor]] = {}
    for l, (layer, q) in enumerate(zip(layers, qs)):
        if not layer.family.point_mass_posterior:
            continue
        commitment = q.aux_loss.mean()
        total = total + commitment
        aux.setdefault("commitment", {})[l] = commitment.detach()
        aux.setdefault("perplexity", {})[l] = q.perplexity()
    return total, aux
