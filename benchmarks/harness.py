"""The harness of hvae's benchmarks: the device they run on, the clocks, and how a step is timed.

The suites (:mod:`benchmarks.suites`) time training steps and IW bounds through hvae's public API with
these: :func:`train_step` (forward, backward and optimiser step, as the trainer runs them), :func:`steady`
(seconds per call in the steady state), :func:`floor_beside` (a step and its compute floor timed in
alternating rounds, again where the hypervisor took much of the CPU), :func:`interleaved` (contenders timed
in alternating blocks) and :func:`train_interleaved` (models trained in turns for equal wall-clock budgets).
The device is set once per run with :func:`use_device` and read as ``harness.DEVICE``; CUDA timings
synchronise before reading the clock.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import hvae
from benchmarks.commands import commit
from benchmarks.floor import as_written, floor_of_other, record_products, time_products
from hvae.train import _autocast

HERE = Path(__file__).parent
# the device every benchmark runs on (``--device``); CUDA timings synchronise before reading the clock
DEVICE = torch.device("cpu")


def use_device(device: str | torch.device) -> None:
    """Run the benchmarks that follow on ``device`` ("cpu", "cuda", "cuda:N")."""
    global DEVICE
    DEVICE = torch.device(device)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "python": platform.python_version(),
    }


def cpu_ticks(stat: str | None = None) -> tuple[int, int] | None:
    """(stolen, total) CPU time of all this machine's CPUs since boot, in clock ticks, from the first line
    of ``/proc/stat`` (or the text ``stat``). Stolen: the time the hypervisor of a virtual machine gave to
    others while this one had work to run (``steal``). None where there is no such file or field."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return None
    for line in stat.splitlines():
        fields = line.split()
        if fields[:1] == ["cpu"]:
            try:  # user nice system idle iowait irq softirq steal (guest time is counted within user)
                ticks = [int(v) for v in fields[1:9]]
            except ValueError:
                return None
            return (ticks[7], sum(ticks)) if len(ticks) == 8 else None
    return None


def stolen_share(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time its hypervisor took between two readings of :func:`cpu_ticks`
    (None where that is not known). On a shared virtual machine this is how far a timing is from the
    machine's own speed: a row timed while a quarter of the time went elsewhere reads a quarter slow, or
    worse where one thread of a parallel kernel waits for the other."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


def binary_batch(batch: int, shape) -> torch.Tensor:
    x = torch.bernoulli(torch.full((batch, *shape), 0.3), generator=torch.Generator().manual_seed(0))
    return x.to(DEVICE)


def steady(step, min_time: float, warmup: int = 3) -> float:
    """Median-free steady state: seconds per call over at least ``min_time`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        sync()
        dt = time.perf_counter() - t0
        if dt >= min_time and n >= 3:
            return dt / n


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def backward(model, x: torch.Tensor, plain: bool = False, bf16: bool = False) -> None:
    """The forward and backward pass of a training step through the public API (``plain``: the yardstick,
    whose forward returns a tuple; ``bf16``: the forward under bf16 autocast, as ``train.precision: bf16``
    runs it)."""
    with _autocast("bf16" if bf16 else "fp32", DEVICE):  # the trainer's own autocast
        out = model(x)
    (out[0] if plain else out.loss).backward()


def train_step(model, opt, x: torch.Tensor, plain: bool = False, bf16: bool = False) -> None:
    """One training step through the public API: :func:`backward`, then the optimiser."""
    backward(model, x, plain, bf16)
    opt.step()
    opt.zero_grad(set_to_none=True)


def optimizer_seconds(model, opt, x: torch.Tensor, plain: bool, bf16: bool, min_time: float) -> float:
    """Seconds per ``opt.step()`` alone, on the gradients of one step of ``x``: what the optimiser costs a
    step, however fast the rest of it runs (the step changes the weights; call it last)."""
    backward(model, x, plain, bf16)
    sec = steady(opt.step, min_time)
    opt.zero_grad(set_to_none=True)
    return sec


# a row timed while the hypervisor took more than this share of the CPU time is timed once more
QUIET_STOLEN = 0.10


def floor_beside(products, fn, min_time: float, packed: bool, rounds: int = 3) -> dict:
    """The floor of ``products`` and the seconds per call of ``fn()``, timed in ``rounds`` alternating rounds
    (a floor, then calls for ``min_time / rounds``): this shared machine's speed drifts by tens of percent
    within minutes, more than the fractions measured, so a floor and a step timed minutes apart would not
    compare. Medians over rounds; the fraction of the floor is the median of the rounds' own fractions.
    ``stolen``: the share of the CPU time the hypervisor took meanwhile (:func:`stolen_share`). Where that
    is above ``QUIET_STOLEN`` the rounds run once more, and the timing with the smaller share is kept (the
    choice goes by the share, not by the speed); ``timings``: how many were made."""
    kept, timings = _rounds(products, fn, min_time, packed, rounds), 1
    if kept["stolen"] is not None and kept["stolen"] > QUIET_STOLEN:
        again, timings = _rounds(products, fn, min_time, packed, rounds), 2
        if again["stolen"] is not None and again["stolen"] < kept["stolen"]:
            kept = again
    return {**kept, "timings": timings}


def _rounds(products, fn, min_time: float, packed: bool, rounds: int) -> dict:
    floors, secs, rows, start = [], [], None, cpu_ticks()
    for _ in range(rounds):
        floor, r = time_products(products, device=DEVICE, min_run_time=min(0.2, min_time / 4) / rounds, packed=packed)
        floors.append(floor)
        rows = rows or r
        secs.append(steady(fn, min_time / rounds, warmup=1))
    return {
        "stolen": stolen_share(start, cpu_ticks()),
        "seconds": statistics.median(secs),
        "floor_seconds": statistics.median(floors),
        "fraction": statistics.median(f / t for f, t in zip(floors, secs)),
        "rounds": list(zip(floors, secs)),
        "rows": rows,
    }


def written_fraction(timed: dict, extra: float | None) -> float | None:
    """The fraction of the floor as written (``extra`` seconds more than the floor), round by round."""
    if extra is None:
        return None
    return statistics.median((f + extra) / t for f, t in timed["rounds"])


def written_extra(model, x: torch.Tensor, bf16: bool, products, min_time: float) -> float | None:
    """How much longer the floor of the model as written is (:func:`benchmarks.floor.as_written`: a mean map
    and a scale map per Gaussian head), from one step of a copy and the products it issues where the model's
    differ (:func:`benchmarks.floor.floor_of_other`); None when the model has no such head to split."""
    twin, split = as_written(model)
    if not split:
        return None
    step = functools.partial(train_step, twin, hvae.make_optimizer(twin, lr=1e-4), x, False, bf16)
    rounds = written_rounds(min_time)
    return floor_of_other(0.0, products, record_products(step), DEVICE, min(0.05, min_time / 4), rounds)


def written_rounds(min_time: float) -> int:
    """Rounds of :func:`benchmarks.floor.floor_of_other` for a row timed for ``min_time`` seconds: five, and
    one in a smoke run (``min_time`` under a second), which runs the path once and does not read the number."""
    return 5 if min_time >= 1 else 1


def interleaved(fns: dict, rounds: int, block: int) -> dict:
    """Median seconds per call of each function, timed in alternating blocks of ``block`` calls."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(block):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / block)
    return {name: statistics.median(t) for name, t in times.items()}


#: seconds of one model's turn in the quality comparison: long against a step, short against machine drift
TURN_S = 5.0


@dataclass
class Contender:
    """One model of the quality comparison, as :func:`train_interleaved` runs it: ``step()`` trains one batch,
    ``resume()`` runs before each of its turns, ``rng`` is its own random-number stream (:func:`rng_state`),
    so the noise a model draws does not depend on how the turns fell."""

    step: Callable[[], None]
    resume: Callable[[], None] = lambda: None
    rng: tuple | None = None


def rng_state() -> tuple:
    """The state of the generators the benchmark device draws from (the CPU's, and the GPU's on CUDA)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(DEVICE) if DEVICE.type == "cuda" else None


def set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], DEVICE)


def train_interleaved(
    contenders: dict[str, Contender], budget_s: float, turn_s: float = TURN_S, clock=time.perf_counter
) -> dict[str, dict]:
    """Train every contender for ``budget_s`` seconds of its own time, in turns of about ``turn_s`` seconds
    (a turn ends after the step that reaches it, or the budget), so a machine whose speed drifts or is shared
    slows all of them alike. Returns per name ``steps`` and ``train_s`` (the time its turns took)."""
    used = dict.fromkeys(contenders, 0.0)
    steps = dict.fromkeys(contenders, 0)
    while any(t < budget_s for t in used.values()):
        for name, c in contenders.items():
            if used[name] >= budget_s:
                continue
            if c.rng is not None:
                set_rng_state(c.rng)
            c.resume()
            sync()
            start = clock()
            turn = min(turn_s, budget_s - used[name])
            while True:
                c.step()
                steps[name] += 1
                sync()
                if clock() - start >= turn:
                    break
            used[name] += clock() - start
            if c.rng is not None:
                c.rng = rng_state()
    return {name: {"steps": steps[name], "train_s": used[name]} for name in contenders}


def batches_forever(ds, batch_size: int, shape):
    """The training batches epoch after epoch (each epoch its own order and binarisation), reshaped."""
    for epoch in itertools.count():
        for x in ds.batches("train", batch_size, epoch=epoch, device=DEVICE):
            yield x.view(-1, *shape)
