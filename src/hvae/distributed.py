"""Many processes: torchrun's environment, the process group, batch shards and exact reductions.

hvae uses PyTorch's own engine. ``torchrun`` starts one process per device and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`session` reads them and joins
the process group (NCCL on CUDA, gloo on the CPU). Without those variables there is one process and every
helper here is the identity, so the jobs have a single code path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .configbase import ConfigError


class DistributedError(RuntimeError):
    """A rank lost contact with the others (one died, the network failed, or a collective timed out)."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints; the other ranks stay silent."""
        return self.rank == 0

    # -- collectives (no-ops in one process) --------------------------------------------------------

    def barrier(self) -> None:
        if self.distributed:
            _guard(dist.barrier)

    def all_min(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise minimum over ranks, e.g. of finite flags: 0 anywhere makes 0 everywhere."""
        if self.distributed:
            _guard(dist.all_reduce, t, op=dist.ReduceOp.MIN)
        return t

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            _guard(dist.all_reduce, t, op=dist.ReduceOp.SUM)
        return t

    def all_sum_dict(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum every tensor of ``sums`` over ranks in one collective (all must share dtype and device)."""
        if not self.distributed:
            return sums
        keys = sorted(sums)
        flat = torch.cat([sums[k].reshape(-1) for k in keys])
        self.all_sum(flat)
        out, i = {}, 0
        for k in keys:
            n = sums[k].numel()
            out[k] = flat[i : i + n].view_as(sums[k])
            i += n
        return out

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        _guard(dist.all_gather_object, out, obj)
        return out

    def run_on_main(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on rank 0 only; if it raises, every rank raises the same exception (no rank waits forever)."""
        err = None
        if self.is_main:
            try:
                fn()
            except Exception as e:  # handed to the other ranks, then raised here too
                err = e
        if self.distributed:
            box = [err]
            _guard(dist.broadcast_object_list, box, src=0)
            err = box[0]
        if err is not None:
            raise err


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistError) as e:
        raise DistributedError(f"rank {dist.get_rank()}: lost contact with the other ranks: {e}") from e


def env_world() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's environment, or None in a plain process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU. Under torchrun (``local_rank`` given) ``auto`` and
    ``cuda`` mean this rank's own GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} was asked for, but this machine has no CUDA device; use auto or cpu")
    if dev.type == "cuda" and local_rank is not None:
        if dev.index is not None and dev.index != local_rank:
            raise ConfigError(
                f"train.device: {name} under torchrun; use cuda or auto (each rank takes cuda:LOCAL_RANK), "
                "and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        dev = torch.device("cuda", local_rank)
    return dev


@contextmanager
def session(device_name: str, timeout_s: float = 1800.0) -> Iterator[Context]:
    """Join torchrun's process group for the duration of a job (or do nothing in a plain process).

    The backend follows the device: NCCL on CUDA, gloo on the CPU. A collective that waits longer than
    ``timeout_s`` (a rank died, a node hangs) fails with :class:`DistributedError` instead of blocking.
    A process group that already exists (the caller made it) is used as it is and left open.
    """
    world = env_world()
    if world is None and not dist.is_initialized():
        yield Context(device=resolve_device(device_name))
        return
    created = False
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = world[2] if world else rank
    else:
        assert world is not None  # without torchrun's variables nor a group, returned above
        rank, world_size, local_rank = world
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError, dist.DistError) as e:
            raise DistributedError(f"rank {rank}: cannot join the process group ({backend}): {e}") from e
        created = True
    try:
        yield Context(rank, world_size, local_rank, device)
        if created:
            # leave together: a gloo rank whose peer tears the group down first can abort at exit
            _guard(dist.barrier)
    except Exception as e:
        if created and getattr(e, "collective", False):
            # every rank raises this one at the same step (a decision they share): leave together too
            _guard(dist.barrier)
        raise
    finally:
        if created:
            dist.destroy_process_group()


def shard(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Rank r's rows ``[r*B/N, (r+1)*B/N)`` of a global batch of B rows (B divisible by N)."""
    if not ctx.distributed:
        return x
    b = x.shape[0] // ctx.world_size
    return x[ctx.rank * b : (ctx.rank + 1) * b]


def eval_shard(n: int, ctx: Context) -> tuple[int, int]:
    """Rank r's contiguous range ``[lo, hi)`` of ``n`` evaluation examples (sizes differ by at most one)."""
    per, extra = divmod(n, ctx.world_size)
    lo = ctx.rank * per + min(ctx.rank, extra)
    return lo, lo + per + (1 if ctx.rank < extra else 0)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random-number state (CPU, and its own CUDA device)."""
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank ``rank``'s training noise: ``seed + rank`` at the start of a run; a run resumed on a
    different number of ranks reseeds every rank from (seed, rank, step)."""
    return seed + rank if step == 0 else (seed * 1_000_003 + step * 7_919 + rank) % (2**63)
