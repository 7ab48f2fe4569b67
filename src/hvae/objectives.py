"""The training objective's options beside the ELBO: free bits and KL balancing.

They change the loss a model minimises (:attr:`hvae.ModelOutput.loss`), never the ELBO it reports. Each
takes the elementwise KL of one level, ``kl_elem[l]`` of shape (B, *latent_shape) in nats, bottom to top:

    loss_KL = beta * sum_l gamma_l * max(lambda, E_batch[KL_l])        (per level, or per channel)
    loss_KL = beta * E_batch[max(lambda, sum_l KL_l)]                   (free_bits_mode: sequence)

with ``free_bits_levels`` (a minimum lambda_l per level) the levels' floors are max(lambda, lambda_l) per level,
and per sequence loss_KL = beta * E_batch[max(lambda, sum_l max(lambda_l, KL_l))]: a level's KL below its
minimum is free, so the target is spread over the levels rather than all taken by the one nearest the data.

with gamma_l = 1 unless KL balancing is on during the warm-up.

Under data parallelism (N processes, each with its share of the batch) the batch means E_batch are those of
the global batch: the caller passes ``batch_sum``, which sums a tensor over the processes, and the levels' KL
sums and row counts are summed in one collective. Each process's loss then has the global value, and a
gradient that, averaged over the processes as DDP averages it, is the gradient of one process's loss on the
whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .config import ModelConfig


def free_bits(kl_elem: Tensor, nats: float, mode: str) -> Tensor:
    """One level's KL, batch mean (a scalar, nats), with ``nats`` free: for the whole level (``mode``
    ``"layer"``) or for each channel (``"channel"``, Kingma et al. 2016: a channel's batch-averaged KL
    below ``nats`` has no gradient). ``kl_elem``: (B, *latent_shape); ``nats`` 0 leaves the KL as it is."""
    channel = nats > 0 and mode == "channel"
    return _floor(_batch_mean(kl_elem, channel), nats)


def _batch_mean(kl_elem: Tensor, channel: bool) -> Tensor:
    """A level's KL, mean over the batch: () nats, or (C,) per channel."""
    if channel:
        return kl_elem.flatten(2).sum(2).mean(0) if kl_elem.dim() > 2 else kl_elem.mean(0)  # (C,)
    return kl_elem.flatten(1).sum(1).mean()


def _floor(mean: Tensor, nats: float) -> Tensor:
    """max(nats, mean), summed over channels: a scalar."""
    return mean.clamp_min(nats).sum() if nats > 0 else mean.sum()


def _global_means(means: list[Tensor], rows: int, batch_sum: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """The global batch means of the levels' KL from this process's means ``means`` (each () or (C,)) over its
    ``rows`` examples: the value of sum_r S_r / sum_r n_r (S_r = n_r * mean_r, the KL summed over process r's
    rows), with the gradient of N S_r / sum_r n_r, which DDP's average over the N processes turns into the
    gradient of the global mean. One collective for all levels: the sums, the rows and N."""
    ref = means[0]
    local = torch.cat(
        [*(m.detach().reshape(-1) * rows for m in means), ref.new_full((1,), float(rows)), ref.new_ones(1)]
    )
    total = batch_sum(local.float())  # (KL terms are float32 even under autocast)
    rows_all, n_proc = total[-2], total[-1]
    out, i = [], 0
    for m in means:
        mean_all = total[i : i + m.numel()].view_as(m) / rows_all
        mine = m * (rows * n_proc / rows_all)  # this process's S_r, times N / sum_r n_r
        out.append(mine + (mean_all - mine).detach())  # the value of mean_all, the gradient of mine
        i += m.numel()
    return out


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


def kl_loss(
    cfg: ModelConfig, kl_elem: list[Tensor], beta: float, batch_sum: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """The KL part of the training loss (a scalar, nats, batch mean): free bits per level, KL balancing
    while ``beta`` is below ``cfg.beta``, times ``beta``. ``kl_elem``: L tensors (B, *latent_shape).
    With ``free_bits_mode: sequence`` the floor is a KL target per example: the levels' KL summed, floored at
    ``free_bits`` nats, then batch-averaged. ``batch_sum``: under data parallelism, sums a tensor over the
    processes that share the batch (see the module doc); None when the batch is all here."""
    minima = cfg.free_bits_levels or [0.0] * len(kl_elem)  # (L,) nats
    if cfg.free_bits_mode == "sequence" and (cfg.free_bits > 0 or any(minima)):  # per example: nothing to share
        # (B,) each example's KL, each level's floored at its minimum, summed over the levels
        total = sum(k.flatten(1).sum(1).clamp_min(m) for k, m in zip(kl_elem, minima))
        return beta * torch.as_tensor(total).clamp_min(cfg.free_bits).mean()
    floors = [max(cfg.free_bits, m) for m in minima]
    balancing = cfg.kl_balancing and beta < cfg.beta
    channel = cfg.free_bits > 0 and cfg.free_bits_mode == "channel"
    means = [_batch_mean(k, channel) for k in kl_elem]
    # both act on the global batch's means; a plain KL is linear in the rows: DDP's average of the gradients is
    # enough there
    if batch_sum is not None and (any(floors) or balancing):
        means = _global_means(means, kl_elem[0].shape[0], batch_sum)
    kl = torch.stack([_floor(m, f) for m, f in zip(means, floors)])
    if balancing:
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
