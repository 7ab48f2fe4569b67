"""How fast the importance-weighted bound runs: chunks of importance samples sized to a memory budget.

The bound itself is the model's (:meth:`hvae.HierarchicalVAE.log_likelihood`, ARCHITECTURE.md):

    log p̂_K(x) = log (1/K) sum_k exp(log p(x, z^k) - log q(z^k | x)),   z^k ~ q(z | x)

with the graph of one chunk of k samples per input in ``model._iw_log_weights(ctxs_k, x_k, k)`` (k, B).
This module decides how many samples a chunk holds and runs them: the bottom-up pass once per input, the
top-down pass on ``k`` copies at a time (memory stays bounded for any K), accumulated by a running
log-sum-exp in float32.

Chunk sizing: by default a chunk holds as many samples as keep every tensor of a pass under
:data:`IW_CHUNK_ELEMENTS` (on a CPU, larger tensors are fresh pages at every allocation; an ``lvae_mnist``
bound takes a tenth of the memory of fixed 32,768-row chunks, at the same speed), spread evenly over the K
samples. The first bound for an input shape runs its first importance sample alone to measure the widest
tensor per input (:class:`_WidestRow`), kept per model and shape. A last chunk short of the others by at most
a quarter runs at their size and only its first samples count, so all chunks have one shape and may run
compiled (``model.iw_compiler``, :mod:`hvae.compiled`); an explicit ``chunk_size`` is kept as given, with the
same rule for its last chunk (one shorter by more than a quarter runs eagerly at its own size). On a CPU the
first bound keeps freed memory in the process (:func:`hvae.allocator.retain_freed_memory`).
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from . import allocator, inputs
from .distributions import _tile

#: the most elements of one tensor in a pass of the IW bound's automatic chunks: on a CPU, glibc serves
#: allocations above 32 MiB with fresh pages (a page fault each 4 KiB at first touch); 8 MiB stays clear of it
IW_CHUNK_ELEMENTS = {"cpu": 2**21, "accelerator": 2**26}

# per model, per input shape (without the batch): the most elements per input of a tensor of one sample's pass
_widths: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _WidestRow(torch.overrides.TorchFunctionMode):
    """The most elements per row of the tensors of ``rows`` rows that the torch functions called inside it
    return (tensors of other leading sizes, such as weights folded with batch norm, are not per row)."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.width = rows, 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == self.rows:
                self.width = max(self.width, t.numel() // self.rows)
        return out


def _add_log_weights(total: Tensor, lw: Tensor) -> Tensor:
    """The running log-sum-exp ``total`` (B,) with the log weights ``lw`` (k, B) added."""
    return torch.logaddexp(total, torch.logsumexp(lw, dim=0))


def log_likelihood(model, x: Tensor, num_samples: int, chunk_size: int | None = None) -> Tensor:
    """The IW bound of ``model`` at ``x`` (B, *data_shape) with ``num_samples`` importance samples per input,
    (B,) nats, in chunks (see the module doc); what :meth:`hvae.HierarchicalVAE.log_likelihood` runs."""
    inputs.check_batch(model, x, values=True)
    num_samples = inputs.count(num_samples, "num_samples")
    if chunk_size is not None:
        chunk_size = inputs.count(chunk_size, "chunk_size", " or None (automatic)")
    if x.device.type == "cpu":
        allocator.tune_once()  # each chunk's memory stays for the next instead of faulting in again
    B = x.shape[0]
    ctxs, prepared = model._bottom_up(x), model.likelihood.prepare(x)  # once per input
    total = torch.full((B,), -math.inf, device=x.device)
    done = 0
    if chunk_size is None:
        shape, widths = tuple(x.shape[1:]), _widths.setdefault(model, {})
        if shape not in widths:  # the widest tensor of a pass per input: the shapes alone decide it
            with _WidestRow(B) as widest:
                total = _add_log_weights(total, model._iw_log_weights(ctxs, prepared, 1))
            widths[shape], done = widest.width, 1
        budget = IW_CHUNK_ELEMENTS["cpu" if x.device.type == "cpu" else "accelerator"]
        most = max(1, budget // widths[shape] // B)
        left = max(1, num_samples - done)
        chunks = -(-left // most)  # as few chunks as the budget allows, of even sizes
        chunk_size = -(-left // chunks)
    k_max = min(int(chunk_size), num_samples - done)
    if k_max > 0:  # tiled once to a full chunk; a shorter last chunk takes a prefix
        ctxs_k, x_k = [_tile(c, k_max) for c in ctxs], _tile(prepared, k_max)
    model.iw_compiler.other_call()  # the step clock times chunks, not what ran between two calls
    model.iw_compiler.check_weights()  # a chunk compiled with frozen weights needs the same weights
    while done < num_samples:
        k = min(k_max, num_samples - done)
        if (k_max - k) * 4 <= k_max:  # full, or short by at most a quarter: one shape, may run compiled
            lw = model.iw_compiler(model, ctxs_k, x_k, k_max)[:k]  # the samples past K are dropped
        else:
            lw = model._iw_log_weights([c[: k * B] for c in ctxs_k], x_k[: k * B], k)
        total = _add_log_weights(total, lw)
        done += k
    return total - math.log(num_samples)
