"""The compute floor of a model: the time of its matrix products and convolutions, each shape alone.

A step cannot be faster than its matrix products. :func:`record_products` runs a function under a
``TorchDispatchMode`` and records every matrix product and convolution it issues (forward, grad-input and
grad-weight alike) with its exact shapes and strides; :func:`time_products` replays each one alone on
fresh tensors, with the threads the step uses (``torch.get_num_threads()``; ``Timer`` defaults to one), and
sums the median times. That sum is the floor; ``batch / floor`` the most examples per
second any implementation of the same mathematics can reach on this machine. For evaluation
(``packed=True``) a linear map's product counts at the faster of torch's kernel and MKL's kernel on weights
packed beforehand, which a compiled IW chunk with frozen weights uses (:mod:`hvae.compiled`).

:func:`products_in_situ` times the same products where they run, inside the step. A product that follows
other work finds its operands out of cache (the step sweeps parameters, gradients and optimiser state far
larger than a core's L2), so it can take longer than alone: floor / (time in the products in situ) is the
ceiling on the fraction of floor that any implementation built on the same product kernels reaches, with
everything else in the step costing nothing.

:func:`as_written` gives the model as the papers write it, for its floor: each Gaussian latent's mean and
scale from two maps of one input where hvae computes both with one map of twice the width (the same
mathematics in fewer, larger products, which lowers the floor itself).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer

aten = torch.ops.aten
PRODUCTS = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.baddbmm.default,
    aten.convolution.default,
    aten.convolution_backward.default,
}


@dataclass(frozen=True)
class Product:
    """One recorded call: the op, its tensor arguments' (shape, stride, dtype) and its other arguments."""

    op: object
    args: tuple

    def materialise(self, device) -> list:
        out = []
        for a in self.args:
            if isinstance(a, tuple) and len(a) == 3 and isinstance(a[2], torch.dtype):
                shape, stride, dtype = a
                size = 1 + sum((s - 1) * st for s, st in zip(shape, stride)) if all(shape) else 0
                base = torch.randn(max(size, 1), dtype=dtype, device=device)
                out.append(torch.as_strided(base, shape, stride))
            else:
                out.append(a)
        return out


def _describe(a):
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), tuple(a.stride()), a.dtype)
    if isinstance(a, (list, tuple)):
        return tuple(_describe(x) for x in a) if any(isinstance(x, torch.Tensor) for x in a) else tuple(a)
    return a


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter[Product] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in PRODUCTS:
            self.calls[Product(func, tuple(_describe(a) for a in args))] += 1
        return func(*args, **(kwargs or {}))


def record_products(fn) -> Counter:
    """Run ``fn()`` once and return a Counter of the products it issued."""
    rec = _Recorder()
    with rec:
        fn()
    return rec.calls


class _InSitu(TorchDispatchMode):
    def __init__(self, sync):
        super().__init__()
        self.sync, self.seconds = sync, 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in PRODUCTS:
            return func(*args, **(kwargs or {}))
        self.sync()
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.sync()
        self.seconds += time.perf_counter() - t0
        return out


def products_in_situ(fn, repeats: int, device="cpu") -> float:
    """Seconds per call of ``fn()`` spent inside its products (eager code only: a compiled function hides
    them). On CUDA each product is synchronised, so this is its kernel time plus launch."""
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    mode = _InSitu(sync)
    with mode:
        for _ in range(repeats):
            fn()
    return mode.seconds / repeats


#: below this a product's timing is a smoke run's (``benchmarks.run --smoke``, the test suite): one call through
#: the same path, timed by the clock alone, the number not read; Timer's block-size estimate costs ~20 ms a call
SMOKE_RUN_TIME = 0.005


def _median_seconds(stmt: str, env: dict, min_run_time: float) -> float:
    if min_run_time < SMOKE_RUN_TIME:
        code = compile(stmt, "<product>", "eval")
        t0 = time.perf_counter()
        eval(code, env)
        return max(time.perf_counter() - t0, 1e-9)
    t = Timer(stmt=stmt, globals=env, num_threads=torch.get_num_threads())
    return t.blocked_autorange(min_run_time=min_run_time).median


def _packed_linear(prod: Product, args: list):
    """For a float32 ``mm`` / ``addmm`` (input @ weight.T, + bias) on a CPU with MKL: the same product through
    MKL's kernel on weights packed beforehand (what a compiled chunk with frozen weights runs), as a statement
    and its globals for :class:`Timer`; None for any other product."""
    if not torch._C.has_mkl or prod.op not in (aten.mm.default, aten.addmm.default):
        return None
    bias, a, wt = (None, *args) if prod.op is aten.mm.default else args
    if len(args) != (2 if bias is None else 3) or a.dim() != 2 or not a.is_contiguous():
        return None
    if a.device.type != "cpu" or a.dtype != torch.float32:
        return None
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != wt.shape[1]):
        return None
    w = wt.t().contiguous()
    packed = torch.ops.mkl._mkl_reorder_linear_weight(w, a.shape[0])
    env = {"f": torch.ops.mkl._mkl_linear, "a": a, "p": packed, "w": w, "b": bias, "m": a.shape[0]}
    return "f(a, p, w, b, m)", env


def time_products(
    calls: Counter, device="cpu", min_run_time: float = 0.2, packed: bool = False
) -> tuple[float, list[dict]]:
    """Sum over recorded products of (count x median time of that product alone). Returns (seconds, rows).
    ``packed``: a linear map's product counts at the faster of torch's kernel and MKL's on packed weights
    (the floor of evaluation, where weights stay fixed and a frozen compiled chunk packs them once)."""
    total, rows = 0.0, []
    for prod, count in calls.items():
        args = prod.materialise(device)
        sec = _median_seconds("op(*args)", {"op": prod.op, "args": args}, min_run_time)
        row = {"op": str(prod.op), "count": count, "seconds": sec}
        other = _packed_linear(prod, args) if packed else None
        if other is not None:
            row["packed_seconds"] = _median_seconds(*other, min_run_time)
            sec = min(sec, row["packed_seconds"])
        total += count * sec
        shapes = [
            a[0] if isinstance(a, tuple) and len(a) == 3 and isinstance(a[2], torch.dtype) else None for a in prod.args
        ]
        rows.append({**row, "shapes": [s for s in shapes if s]})
    rows.sort(key=lambda r: -min(r["seconds"], r.get("packed_seconds", r["seconds"])) * r["count"])
    return total, rows


class WrittenHead(nn.Module):
    """A Gaussian head as the papers write it: one map for the means, one for the scales' raw values, their
    outputs side by side along dimension 1 as the merged head's (same weights, same outputs)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        n = head.weight.shape[0]
        if n % 2:
            raise ValueError(f"a mean/scale head has an even number of outputs, got {n}")
        halves = []
        for w, b in zip(head.weight.detach().chunk(2), head.bias.detach().chunk(2)):
            if isinstance(head, nn.Linear):
                m = nn.Linear(head.in_features, n // 2)
            else:  # a convolution: 1x1, or NVAE's 3x3 posterior head (its padding kept)
                m = type(head)(
                    head.in_channels,
                    n // 2,
                    head.kernel_size,
                    stride=head.stride,
                    padding=head.padding,
                    dilation=head.dilation,
                )
            with torch.no_grad():
                m.weight.copy_(w)
                m.bias.copy_(b)
            halves.append(m.to(device=head.weight.device, dtype=head.weight.dtype))
        self.mean, self.scale = halves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mean(x), self.scale(x)], dim=1)


def as_written(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of an hvae model whose Gaussian latent heads are each split into a mean map and a scale map
    (:class:`WrittenHead`), and how many heads were split (0: nothing to split, e.g. discrete latents only).
    The copy computes the same ELBO from the same weights; only its products differ."""
    from hvae.distributions import GaussianFamily
    from hvae.spectral import SpectralNorms

    twin = copy.deepcopy(model)
    split = 0
    for layer in twin.layers:
        if not isinstance(layer.family, GaussianFamily):
            continue
        for name in ("prior_head", "posterior_head"):
            head = getattr(layer, name, None)
            if isinstance(head, (nn.Linear, nn.modules.conv._ConvNd)):
                setattr(layer, name, WrittenHead(head))
                split += 1
    if twin.spectral is not None:  # the power iterations follow the weights the written model has
        twin.spectral = SpectralNorms(twin)
    twin.set_compile("never")
    return twin.to(next(model.parameters()).device), split


def floor_of_other(
    floor: float,
    calls: Counter,
    other: Counter,
    device="cpu",
    min_run_time: float = 0.05,
    rounds: int = 5,
    packed: bool = False,
) -> float:
    """The floor of ``other``'s products given ``floor``, that of ``calls``: ``floor`` plus the products
    only ``other`` issues minus those only ``calls`` issues, the two sets timed in alternating rounds, so
    the difference is not lost in the machine's drift between two separate floors. Each set counts at its
    fastest round: interference only ever slows a product down (on a virtual machine, a CPU taken away
    mid-product can make a small one a hundred times slower for seconds), and a median of rounds, most of
    them slowed, once put a written floor below zero."""
    extra, saved = other - calls, calls - other
    if not extra and not saved:
        return floor
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for t, products in zip(times, (extra, saved)):
            t.append(time_products(products, device, min_run_time, packed)[0])
    return floor + min(times[0]) - min(times[1])


def matmul_roofline(n: int = 2048, device="cpu", dtype=torch.float32, min_run_time: float = 1.0) -> float:
    """GFLOP/s of one large square matrix product: the machine's practical peak for this dtype, timed for
    ``min_run_time`` seconds."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = Timer(stmt="a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
    t = t.blocked_autorange(min_run_time=min_run_time)
    return 2 * n**3 / t.median / 1e9
