"""Optimisers for hierarchical VAEs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class _FusedGroup:
    """What one parameter group's fused step needs, gathered once: the lists the kernel takes and the step
    counters as views of one tensor (incremented by one call instead of one per parameter)."""

    group: dict
    params: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    steps: Tensor
    step_views: list[Tensor]


def _plain(group: dict) -> bool:
    """A group the kept-lists step covers: fused, none of the options it leaves to ``Adam.step``."""
    return (
        bool(group.get("fused"))
        and not any(group.get(k) for k in ("amsgrad", "maximize", "capturable", "differentiable"))
        and not any(isinstance(v, Tensor) for v in (group["lr"], *group["betas"]))
    )


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` whose fused step skips the per-parameter Python of ``Adam.step``.

    Same arguments, mathematics, kernel and state (``state_dict`` reads and loads as ``torch.optim.Adam``'s).
    Once every parameter has its state, a step gathers the gradients and calls the fused kernel on lists
    kept from the step before; the step counters become views of one tensor per group, incremented by one
    call (torch keeps one scalar tensor per parameter and increments each by its own call). For a model of
    80 tensors this halves the optimiser's time on a CPU (2.6 to 1.5 ms a step for ``lvae_mnist``). Anything
    this shortcut does not cover runs ``torch.optim.Adam.step`` itself: a closure, a parameter without a
    gradient, AMP's grad scaling, amsgrad, maximize, capturable or differentiable groups, a tensor
    learning rate, parameters of several devices or dtypes in a group, and the first step of each state.
    The state's tensors are updated in place; code that replaces them should call ``load_state_dict``.
    """

    _fused_groups: list[_FusedGroup] | None = None
    _fused_state: object = None  # the state dict the lists were gathered from
    _gathered_at: int | None = None  # len(self.state) when gathering last found a state missing

    def step(self, closure=None):
        if closure is None and self._fused_step():
            return None
        return super().step(closure)  # on the same tensors: the kept lists stay valid

    def load_state_dict(self, state_dict: dict) -> None:
        self._fused_groups = self._gathered_at = None
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict) -> None:
        self._fused_groups = self._gathered_at = None
        super().add_param_group(param_group)

    def state_dict(self) -> dict:
        """As ``torch.optim.Adam.state_dict``; each step counter is its own tensor (not a view of the
        shared counters), so the state saves with safetensors and loads anywhere."""
        sd = super().state_dict()
        sd["state"] = {
            k: {n: v.clone() if n == "step" and isinstance(v, Tensor) else v for n, v in s.items()}
            for k, s in sd["state"].items()
        }
        return sd

    def _fused_step(self) -> bool:
        """Run the step through the kept lists; False (nothing done) where it does not apply."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return False
        groups = self._fused_groups
        if groups is None or self._fused_state is not self.state or len(groups) != len(self.param_groups):
            if self._gathered_at == len(self.state):  # no new state since the last try: still incomplete
                return False
            groups = self._gather()
            if groups is None:
                self._gathered_at = len(self.state)
                return False
        grads = []
        for g, group in zip(groups, self.param_groups):
            if g.group is not group or len(group["params"]) != len(g.params) or not _plain(group):
                self._fused_groups = None
                return False
            gs = [p.grad for p in g.params]
            if any(x is None or x.is_sparse for x in gs):
                return False
            grads.append(gs)
        self._accelerator_graph_capture_health_check()
        with torch.no_grad():
            for g, gs in zip(groups, grads):
                group = g.group
                beta1, beta2 = group["betas"]
                g.steps.add_(1)
                kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
                kernel(
                    g.params,
                    gs,
                    g.exp_avgs,
                    g.exp_avg_sqs,
                    [],
                    g.step_views,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=float(beta1),
                    beta2=float(beta2),
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=False,
                )
        return True

    def _gather(self) -> list[_FusedGroup] | None:
        groups = []
        for group in self.param_groups:
            if not _plain(group):
                return None
            params = list(group["params"])
            states = [self.state.get(p) for p in params]
            if not params or any(not s or {"step", "exp_avg", "exp_avg_sq"} - s.keys() for s in states):
                return None
            if len({(p.device, p.dtype) for p in params}) != 1 or any(torch.is_complex(p) for p in params):
                return None
            steps = torch.stack([s["step"].reshape(()) for s in states])
            views = list(steps.unbind())
            for s, v in zip(states, views):
                s["step"] = v
            groups.append(
                _FusedGroup(
                    group, params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], steps, views
                )
            )
        self._fused_groups, self._fused_state = groups, self.state
        return groups


def make_optimizer(model: nn.Module, lr: float = 1e-3, name: str = "adam", **kwargs) -> torch.optim.Optimizer:
    """Adam (default; :class:`Adam`, the fused kernel) or Adamax over the model's parameters, using the fused
    or multi-tensor kernel.

    Keyword arguments go to the optimiser (``betas``, ``eps``, ``weight_decay``, ...).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        try:
            return Adam(params, lr=lr, fused=kwargs.pop("fused", True), **kwargs)
        except (RuntimeError, TypeError):  # fused kernel unavailable for this device / dtype / release
            return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, foreach=True, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'adamax'")
