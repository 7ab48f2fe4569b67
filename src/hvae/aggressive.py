"""Aggressive encoder updates early in training (He et al. 2019, "Lagging inference networks and posterior
collapse in variational autoencoders", Algorithm 1): ``train.aggressive_encoder``.

A strong decoder learns faster than the inference network can follow it, and the model settles where q(z|x)
carries nothing. While the aggressive phase lasts, before each training step the inference network alone (the
token and bottom-up encoders, the posterior heads, BN-VAE's shifts: :func:`inference_parameters`) is updated on
fresh training batches, with an optimiser of its own, until its loss stops falling or for at most
``train.aggressive_inner_steps`` steps; the training step that follows then updates the generative model only
(the encoder's gradients are dropped before the trainer's optimiser steps). Every
``train.aggressive_mi_every`` training steps the mutual information I_q(x; z) is estimated on a fixed batch
(:func:`mutual_information`); at the first check where it did not rise the phase ends, for good, and training
goes on as usual.

The inner loop stops by He et al.'s rule (their code checks every 15 inner steps): when the mean loss of the
last ``WINDOW`` inner steps is not below the mean of the ``WINDOW`` before, or at the limit.

A checkpoint holds the phase's state (:meth:`AggressiveEncoder.state_dict`: whether it is over, the history of
I_q and of inner steps, where the inner batches are, as JSON in ``state.json``; the inner optimiser's tensors in
``aggressive.safetensors``), and ``hvae train --resume`` restores it, so a resumed run takes the decisions of one
that never stopped. The phase runs in one process: its inner steps are not synchronised across ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import stacked
from .configbase import ConfigError
from .files import load_tensors

#: the file of a checkpoint that holds the inner optimiser's tensors
STATE_FILE = "aggressive.safetensors"

#: inner steps whose mean loss is compared with the previous window's (He et al.'s code: 15)
WINDOW = 15


def inference_parameters(model) -> list[nn.Parameter]:
    """The parameters of q(z | x) of a :class:`~hvae.model.HierarchicalVAE`: token and bottom-up encoders, each
    level's posterior maps (``posterior_head``, ``post_from_d``, ``post_from_h``) and BN-VAE mean norms, the
    posterior side of depth attention. Everything else (priors, transitions, decoder) is generative."""
    mods: list[nn.Module | None] = [model.token_encoder, model.encoder]
    for layer in model.layers:
        mods += [getattr(layer, name, None) for name in ("posterior_head", "post_from_d", "post_from_h", "mean_norm")]
    if model.depth_attn is not None:
        mods.append(model.depth_attn.posterior)
    seen: dict[int, nn.Parameter] = {}
    for m in mods:
        for p in m.parameters() if m is not None else ():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


@torch.no_grad()
def mutual_information(model, x: Tensor) -> float:
    """I_q(x; z) = E_x E_q(z|x)[log q(z | x)] - E_q(z)[log q(z)] over the batch ``x`` (B, *data_shape), nats, for
    all levels' z jointly; q(z), the aggregate posterior, is the batch's mixture: log q(z) = logmeanexp_i
    log q(z | x_i) (He et al. 2019's estimate; at most log B). One z ~ q(z | x_j) per example; the B x B pairs
    log q(z^j | x^i) take one top-down (or, for the stacked VAE, upward) pass of B^2 rows. Eval mode."""
    was_training = model.training
    model.eval()
    try:
        B = x.shape[0]
        ctxs = model._bottom_up(x)
        zs = model._infer(None, ctxs=ctxs).zs  # z^j ~ q(z | x_j)
        ctx_pairs = [c.repeat(B, *([1] * (c.dim() - 1))) for c in ctxs]  # row j B + i: x_i
        z_pairs = [z.repeat_interleave(B, dim=0) for z in zs]  # row j B + i: z^j
        if model.config.inference == "bottom_up":
            _, qs = stacked.upward(model, ctx_pairs[0], pick=lambda l, _, q: z_pairs[l])
        else:
            qs = model._top_down(B * B, ctxs=ctx_pairs, zs_given=z_pairs).qs
        log_q = torch.stack([q.log_prob(z).flatten(1).sum(1) for q, z in zip(qs, z_pairs)]).sum(0).view(B, B)  # [j, i]
        log_q_own = log_q.diagonal()  # log q(z^j | x_j)
        log_q_agg = torch.logsumexp(log_q, dim=1) - math.log(B)  # log q(z^j), the batch's mixture
        return float((log_q_own - log_q_agg).mean())
    finally:
        model.train(was_training)


class AggressiveEncoder:
    """The aggressive phase of a training run (see the module's docstring).

    ``batches``: an endless iterator of training batches on the model's device, for the inner steps (the
    trainer draws them in an order of their own, so the training steps' data order does not change);
    ``probe``: the fixed batch the mutual information is measured on; ``optimizer``: the trainer's, which
    must not move the encoder while the phase lasts. Call :meth:`before_step` before each training step.
    """

    def __init__(
        self,
        model,
        optimizer: torch.optim.Optimizer,
        batches: Iterator[Tensor],
        probe: Tensor,
        *,
        lr: float,
        max_inner: int = 100,
        mi_every: int = 50,
        grad_clip: float | None = None,
        window: int = WINDOW,
        log: Callable[[str], None] = print,
    ):
        self.model, self.batches, self.probe = model, batches, probe
        self.max_inner, self.mi_every, self.grad_clip, self.log = max_inner, mi_every, grad_clip, log
        self.window = window
        self.params = inference_parameters(model)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.active = True
        self.mi: list[tuple[int, float]] = []  # (training step, I_q nats) at each check
        self.inner: list[int] = []  # inner steps taken before each training step of the phase
        self.ended_at: int | None = None
        optimizer.register_step_pre_hook(self._drop_encoder_grads)

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """The phase's state for a checkpoint: (JSON-able record, tensors of the inner optimiser). Once the phase
        is over the optimiser is not needed again: no tensors."""
        from .checkpoint import _flatten_optimizer

        record: dict[str, Any] = {
            "active": self.active,
            "ended_at": self.ended_at,
            "mi": [list(m) for m in self.mi],
            "inner": list(self.inner),
        }
        tensors: dict[str, Tensor] = {}
        if self.active:
            tensors, record["optimizer"] = _flatten_optimizer(self.optimizer.state_dict())
            if isinstance(self.batches, InnerBatches):
                record["batches"] = self.batches.position()
        return record, tensors

    def load_state_dict(self, record: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` gave (``tensors`` on the model's device)."""
        from .checkpoint import _unflatten_optimizer

        self.active, self.ended_at = bool(record["active"]), record["ended_at"]
        self.mi = [(int(s), float(v)) for s, v in record["mi"]]
        self.inner = [int(n) for n in record["inner"]]
        if self.active:
            self.optimizer.load_state_dict(_unflatten_optimizer(tensors, record["optimizer"]))
            if "batches" in record and isinstance(self.batches, InnerBatches):
                self.batches.seek(**record["batches"])

    def _drop_encoder_grads(self, _optimizer, _args, _kwargs) -> None:
        # the phase's training step updates the generative model only: Adam skips parameters without a gradient
        if self.active:
            for p in self.params:
                p.grad = None

    def before_step(self, step: int, beta: float | None = None) -> None:
        """At training step ``step`` (``beta``: its KL weight): check the mutual information when due, and while
        the phase lasts update the inference network until it converges."""
        if not self.active:
            return
        if step % self.mi_every == 0:
            # the same draws at every check (a change of I_q is not noise of z), outside the training's stream
            devices = [self.probe.device] if self.probe.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                mi = mutual_information(self.model, self.probe)
            if self.mi and mi <= self.mi[-1][1]:
                self.active, self.ended_at = False, step
                self.log(
                    f"note: train.aggressive_encoder: the mutual information I_q(x; z) stopped rising ({mi:.3f} nats "
                    f"at step {step}, {self.mi[-1][1]:.3f} at step {self.mi[-1][0]}): normal training from step {step}"
                )
                self.mi.append((step, mi))
                return
            self.mi.append((step, mi))
            self.log(f"note: train.aggressive_encoder: I_q(x; z) = {mi:.3f} nats at step {step}")
        self.inner.append(self._inner_loop(beta))

    def _inner_loop(self, beta: float | None) -> int:
        """Encoder updates on fresh batches until the loss stops falling; returns how many were taken."""
        model = self.model
        step0 = model.step.clone()  # inner passes must not advance the model's own schedules
        losses: list[float] = []
        taken = 0
        while taken < self.max_inner:
            taken += 1
            loss = model(next(self.batches), beta=beta).loss
            loss.backward()
            if torch.isfinite(loss):
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
                self.optimizer.step()  # the encoder's parameters only
                losses.append(float(loss.detach()))
            model.zero_grad(set_to_none=True)  # the generative model's gradients are dropped
            if converged(losses, self.window):
                break
        model.step.copy_(step0)
        return taken


def converged(losses: list[float], window: int = WINDOW) -> bool:
    """He et al.'s rule for the inner loop, checked every ``window`` steps: the mean loss of the last ``window``
    steps is not below that of the ``window`` before."""
    n = len(losses)
    return n >= 2 * window and n % window == 0 and sum(losses[-window:]) >= sum(losses[-2 * window : -window])


class InnerBatches:
    """The inner steps' endless stream of training batches, in an order of their own (epochs far beyond any run's:
    the training steps' data order stays as it was), whose position a checkpoint records (:meth:`position`,
    :meth:`seek`) so that a resumed run draws the batches an uninterrupted one would."""

    FIRST_EPOCH = 1_000_000

    def __init__(self, dataset, batch_size: int, device):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.seek(self.FIRST_EPOCH, 0)

    def position(self) -> dict[str, int]:
        """The next batch's epoch and index in it."""
        return {"epoch": self.epoch, "batch": self.batch}

    def seek(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = int(epoch), int(batch)
        self._it = self._epoch()

    def _epoch(self) -> Iterator[Tensor]:
        return self.dataset.batches(
            "train", self.batch_size, epoch=self.epoch, start_batch=self.batch, device=self.device
        )

    def __iter__(self) -> InnerBatches:
        return self

    def __next__(self) -> Tensor:
        for _ in range(2):  # at the end of an epoch, the next one begins
            x = next(self._it, None)
            if x is not None:
                self.batch += 1
                return x
            self.epoch, self.batch = self.epoch + 1, 0
            self._it = self._epoch()
        raise RuntimeError("train.aggressive_encoder: the training split gives no batch")


#: examples of the fixed batch the mutual information is measured on (B^2 pairs of posterior evaluations)
PROBE_EXAMPLES = 128


def start(job, resumed_from: Path | None = None) -> AggressiveEncoder | None:
    """The aggressive phase of ``hvae train``'s loop (``job``: its :class:`hvae.train._Job`), or None where the
    run does not ask for it. A run resumed from the checkpoint ``resumed_from`` continues the phase as the
    checkpoint left it (``job.state["aggressive"]``); one whose checkpoint has no record of it (written before
    hvae kept one) does not enter it again."""
    tc, model = job.config.train, job.model
    if not tc.aggressive_encoder:
        return None
    if job.ctx.distributed:
        raise ConfigError(
            "train.aggressive_encoder runs in one process (its inner encoder steps are not synchronised across "
            "ranks): train without torchrun, or set train.aggressive_encoder: false"
        )
    if model.config.decoder_only:
        raise ConfigError(
            "train.aggressive_encoder updates the encoder, and a decoder-only model (model.decoder_only: true) has "
            "none: set train.aggressive_encoder: false"
        )
    if any(layer.flow is not None for layer in model.layers):
        raise ConfigError(
            "train.aggressive_encoder decides when to stop from the mutual information I_q(x; z), which scores z "
            "under q, and a posterior with a flow (model.nvae.flows) cannot score a z it did not draw: set "
            "model.nvae.flows: 0 or train.aggressive_encoder: false"
        )
    record = job.state.get("aggressive")
    if job.state["step"] > 0 and record is None:
        job.log(
            "note: train.aggressive_encoder: the checkpoint holds no record of the aggressive phase (written by "
            "an older hvae): the resumed run does not enter it again"
        )
        return None
    device = job.ctx.device
    probe = job.val_x if job.val_x is not None else next(job.dataset.batches("train", PROBE_EXAMPLES))
    probe = model.trim_padding(probe[:PROBE_EXAMPLES]).to(device)
    agg = AggressiveEncoder(
        model,
        job.opt,
        InnerBatches(job.dataset, job.batch_size, device),
        probe,
        lr=tc.lr,
        max_inner=tc.aggressive_inner_steps,
        mi_every=tc.aggressive_mi_every,
        grad_clip=tc.grad_clip,
        log=job.log,
    )
    if job.state["step"] > 0 and record is not None:
        tensors: dict[str, Tensor] = {}
        if resumed_from is not None and (resumed_from / STATE_FILE).is_file():
            tensors = load_tensors(resumed_from / STATE_FILE, device)[0]
        elif record["active"]:
            raise ConfigError(f"{resumed_from} records an aggressive phase under way but has no {STATE_FILE}")
        agg.load_state_dict(record, tensors)
        when = "under way" if agg.active else f"over since step {agg.ended_at}"
        job.log(f"note: train.aggressive_encoder: resumed with the aggressive phase {when}")
    return agg
