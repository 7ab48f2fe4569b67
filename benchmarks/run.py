"""hvae's benchmark suite: ``python -m benchmarks.run`` (``make bench``); ``--smoke`` runs everything briefly.

Measures on this machine, in one process (the memory of the IW bound: a fresh one per K): the large-matrix
roofline; for each model the floor (its matrix products timed alone, see floor.py) and the training
throughput reached through the public API (``build_model`` / ``make_optimizer`` /
``model(x).loss.backward()`` / ``opt.step()``), with the time its products take inside the step (the
ceiling), the optimiser's step alone, which together give the most of the floor that any implementation
built on the same product kernels and optimiser reaches (reachable), and hvae against the plain yardstick
interleaved; the importance-weighted evaluation rate at K = 5000 against its own floor, with the memory it
takes against K; time per step against depth; and (``--quality``) the IW bound reached on Fashion-MNIST for
a fixed wall-clock budget; with each training and IW row, the share of the CPU time a virtual machine's
hypervisor took while it was timed. Writes ``benchmarks/results/<name>.json`` and the tables of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import hvae
from benchmarks.floor import (
    as_written,
    floor_of_other,
    matmul_roofline,
    products_in_situ,
    record_products,
    time_products,
)
from benchmarks.plain_lvae import PlainLVAE
from hvae.train import _autocast

HERE = Path(__file__).parent
# the device every benchmark runs on (``--device``); CUDA timings synchronise before reading the clock
_DEVICE = torch.device("cpu")


def _sync() -> None:
    if _DEVICE.type == "cuda":
        torch.cuda.synchronize(_DEVICE)


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "commit": commit,
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


def _binary_batch(batch: int, shape) -> torch.Tensor:
    x = torch.bernoulli(torch.full((batch, *shape), 0.3), generator=torch.Generator().manual_seed(0))
    return x.to(_DEVICE)


def _steady(step, min_time: float, warmup: int = 3) -> float:
    """Median-free steady state: seconds per call over at least ``min_time`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _sync()
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        _sync()
        dt = time.perf_counter() - t0
        if dt >= min_time and n >= 3:
            return dt / n


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _backward(model, x: torch.Tensor, plain: bool = False, bf16: bool = False) -> None:
    """The forward and backward pass of a training step through the public API (``plain``: the yardstick,
    whose forward returns a tuple; ``bf16``: the forward under bf16 autocast, as ``train.precision: bf16``
    runs it)."""
    with _autocast("bf16" if bf16 else "fp32", _DEVICE):  # the trainer's own autocast
        out = model(x)
    (out[0] if plain else out.loss).backward()


def _train_step(model, opt, x: torch.Tensor, plain: bool = False, bf16: bool = False) -> None:
    """One training step through the public API: :func:`_backward`, then the optimiser."""
    _backward(model, x, plain, bf16)
    opt.step()
    opt.zero_grad(set_to_none=True)


def optimizer_seconds(model, opt, x: torch.Tensor, plain: bool, bf16: bool, min_time: float) -> float:
    """Seconds per ``opt.step()`` alone, on the gradients of one step of ``x``: what the optimiser costs a
    step, however fast the rest of it runs (the step changes the weights; call it last)."""
    _backward(model, x, plain, bf16)
    sec = _steady(opt.step, min_time)
    opt.zero_grad(set_to_none=True)
    return sec


def train_throughput(
    name: str,
    model: torch.nn.Module,
    batch: int,
    shape,
    min_time: float,
    plain=False,
    floor_of: dict | None = None,
    bf16: bool = False,
) -> dict:
    """Steady-state training images/s, GFLOP/s and fraction of the model's floor. ``floor_of``: the row of
    the same model run eagerly, whose floor and FLOPs apply (a compiled step hides its products from the
    recorder). ``bf16``: the step under bf16 autocast; its floor is its own products, in bf16."""
    torch.manual_seed(0)
    model = model.to(_DEVICE).train()
    x = _binary_batch(batch, shape)
    opt = hvae.make_optimizer(model, lr=1e-4)

    step = functools.partial(_train_step, model, opt, x, plain, bf16)
    step()  # a compiled model compiles here
    if floor_of is None:
        products = record_products(step)
        flops = _flops(step)
        extra = None if plain else _written_extra(model, x, bf16, products, min_time)
    else:  # a compiled step hides its products: the eager row's, timed again beside this step
        products, extra = floor_of["_products"], floor_of["_written_extra"]
        flops = floor_of["mflop_per_image"] * 1e6 * batch
    for _ in range(10):
        step()
    timed = _floor_beside(products, step, min_time, packed=False)
    sec, floor = timed["seconds"], timed["floor_seconds"]
    in_situ = products_in_situ(step, max(3, round(min_time / sec)), _DEVICE) if floor_of is None else None
    opt_s = optimizer_seconds(model, opt, x, plain, bf16, min_time / 3) if floor_of is None else None
    return {
        "name": name,
        "batch": batch,
        "precision": "bf16" if bf16 else "fp32",
        "images_per_s": batch / sec,
        "step_ms": 1e3 * sec,
        "gflops_per_s": flops / sec / 1e9,
        "mflop_per_image": flops / batch / 1e6,
        "floor_ms": 1e3 * floor,
        "floor_images_per_s": batch / floor,
        "fraction_of_floor": timed["fraction"],
        "floor_and_step_ms_by_round": [[1e3 * f, 1e3 * t] for f, t in timed["rounds"]],
        "written_floor_ms": None if extra is None else 1e3 * (floor + extra),
        "written_floor_images_per_s": None if extra is None else batch / (floor + extra),
        "fraction_of_written_floor": _written_fraction(timed, extra),
        "products_in_step_ms": None if in_situ is None else 1e3 * in_situ,
        "ceiling": None if in_situ is None else floor / in_situ,
        "optimizer_ms": None if opt_s is None else 1e3 * opt_s,
        "reachable": None if in_situ is None else floor / (in_situ + opt_s),
        "top_products": timed["rows"][:5],
        "cpu_stolen": timed["stolen"],
        "timings": timed["timings"],
        "_products": products,
        "_written_extra": extra,
    }


# a row timed while the hypervisor took more than this share of the CPU time is timed once more
QUIET_STOLEN = 0.10


def _floor_beside(products, fn, min_time: float, packed: bool, rounds: int = 3) -> dict:
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
        floor, r = time_products(products, device=_DEVICE, min_run_time=min(0.2, min_time / 4) / rounds, packed=packed)
        floors.append(floor)
        rows = rows or r
        secs.append(_steady(fn, min_time / rounds, warmup=1))
    return {
        "stolen": stolen_share(start, cpu_ticks()),
        "seconds": statistics.median(secs),
        "floor_seconds": statistics.median(floors),
        "fraction": statistics.median(f / t for f, t in zip(floors, secs)),
        "rounds": list(zip(floors, secs)),
        "rows": rows,
    }


def _written_fraction(timed: dict, extra: float | None) -> float | None:
    """The fraction of the floor as written (``extra`` seconds more than the floor), round by round."""
    if extra is None:
        return None
    return statistics.median((f + extra) / t for f, t in timed["rounds"])


def _written_extra(model, x: torch.Tensor, bf16: bool, products, min_time: float) -> float | None:
    """How much longer the floor of the model as written is (:func:`benchmarks.floor.as_written`: a mean map
    and a scale map per Gaussian head), from one step of a copy and the products it issues where the model's
    differ (:func:`benchmarks.floor.floor_of_other`); None when the model has no such head to split."""
    twin, split = as_written(model)
    if not split:
        return None
    step = functools.partial(_train_step, twin, hvae.make_optimizer(twin, lr=1e-4), x, False, bf16)
    return floor_of_other(0.0, products, record_products(step), _DEVICE, min(0.05, min_time / 4))


def _interleaved(fns: dict, rounds: int, block: int) -> dict:
    """Median seconds per call of each function, timed in alternating blocks of ``block`` calls."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync()
            t0 = time.perf_counter()
            for _ in range(block):
                fn()
            _sync()
            times[name].append((time.perf_counter() - t0) / block)
    return {name: statistics.median(t) for name, t in times.items()}


def paired_iw(eager, compiled, batch: int, num_samples: int, rounds: int) -> dict:
    """Importance samples/s of the IW bound of one ``lvae_mnist`` three ways, interleaved (see
    :func:`paired_speed`): automatic chunks eager (``eager``), the same compiled (``compiled``, the same
    weights), and the fixed chunks of 32,768 rows per pass that ``log_likelihood`` used before it sized them
    (the before/after of RESULTS.md)."""
    x = _binary_batch(batch, [784])
    fns = {
        "automatic chunks": lambda: eager.log_likelihood(x, num_samples=num_samples),
        "automatic chunks, compiled": lambda: compiled.log_likelihood(x, num_samples=num_samples),
        "32,768 rows per chunk (before)": lambda: eager.log_likelihood(
            x, num_samples=num_samples, chunk_size=max(1, 32768 // batch)
        ),
    }
    for fn in fns.values():  # warm (the compiled model compiled in iw_eval, for these shapes)
        fn()
    sec = _interleaved(fns, rounds, 1)
    return {
        "batch": batch,
        "K": num_samples,
        "rounds": rounds,
        "samples_per_s": {name: batch * num_samples / t for name, t in sec.items()},
        "compile": compiled.iw_compiler.status,
    }


def paired_speed(batch: int, rounds: int, block: int, compiled: bool = True) -> dict:
    """ms per training step of hvae's ``lvae_mnist`` (eager, and compiled when ``compiled``) and the plain
    yardstick, timed in alternating blocks of ``block`` steps for ``rounds`` rounds in one process: the
    speed of this shared machine drifts by tens of percent over minutes, and interleaving lays the drift on
    all contenders alike (the table rows above are measured one after another). Medians over rounds."""
    lvae = hvae.presets.lvae_mnist()
    x = _binary_batch(batch, [784])
    steps = {}
    for name in ("lvae_mnist", "lvae_mnist compiled", "plain yardstick"):
        if name == "lvae_mnist compiled" and not compiled:
            continue
        torch.manual_seed(0)
        if name == "plain yardstick":
            model, plain = PlainLVAE(), True
        else:
            model, plain = hvae.build_model(lvae), False
            model.set_compile("always" if name.endswith("compiled") else "never")
        model = model.to(_DEVICE).train()
        opt = hvae.make_optimizer(model, lr=1e-4)

        step = functools.partial(_train_step, model, opt, x, plain)
        for _ in range(5):  # the compiled contender compiles here
            step()
        steps[name] = step
    ms = {name: 1e3 * sec for name, sec in _interleaved(steps, rounds, block).items()}
    return {
        "batch": batch,
        "rounds": rounds,
        "block": block,
        "step_ms": ms,
        "speedup_vs_yardstick": {name: ms["plain yardstick"] / t for name, t in ms.items()},
    }


def iw_eval(
    model, batch: int, num_samples: int, chunk_size: int | None, min_time: float, floor_of: dict | None = None
) -> dict:
    """Importance samples/s of ``log_likelihood`` and the fraction of its floor. ``floor_of``: the result of
    the same model run eagerly, whose floor applies (a compiled chunk hides its products)."""
    model = model.to(_DEVICE).eval()
    x = _binary_batch(batch, model.data_shape)

    def run():
        model.log_likelihood(x, num_samples=num_samples, chunk_size=chunk_size)

    run()  # a compiled model compiles here
    if floor_of is None:
        products = record_products(run)  # each product at its faster kernel: torch's, or MKL's on packed weights
        twin, split = as_written(model)  # the model as written: a mean map and a scale map per Gaussian head
        extra = None
        if split:
            twin_run = record_products(lambda: twin.log_likelihood(x, num_samples, chunk_size=chunk_size))
            extra = floor_of_other(0.0, products, twin_run, _DEVICE, min(0.05, min_time / 4), packed=True)
    else:  # a compiled chunk hides its products: the eager row's, timed again beside this bound
        products, extra = floor_of["_products"], floor_of["_written_extra"]
    timed = _floor_beside(products, run, min_time, packed=True)
    sec, floor = timed["seconds"], timed["floor_seconds"]
    in_situ = products_in_situ(run, max(1, round(min_time / sec)), _DEVICE) if floor_of is None else None
    return {
        "batch": batch,
        "K": num_samples,
        "samples_per_s": batch * num_samples / sec,
        "seconds": sec,
        "floor_seconds": floor,
        "fraction_of_floor": timed["fraction"],
        "floor_and_call_seconds_by_round": timed["rounds"],
        "ceiling": None if in_situ is None else floor / in_situ,
        "written_floor_seconds": None if extra is None else floor + extra,
        "written_floor_samples_per_s": None if extra is None else batch * num_samples / (floor + extra),
        "fraction_of_written_floor": _written_fraction(timed, extra),
        "compile": model.iw_compiler.status,
        "cpu_stolen": timed["stolen"],
        "timings": timed["timings"],
        "_products": products,
        "_written_extra": extra,
    }


_MEMORY_SCRIPT = """
import resource, sys, torch, hvae

def peak_kib():  # this process's own peak (ru_maxrss starts at the parent's, inherited across fork and exec)
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except OSError:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r // 1024 if sys.platform == "darwin" else r

torch.set_num_threads({threads})
torch.manual_seed(0)
model = hvae.build_model(hvae.presets.lvae_mnist()).eval()
x = torch.bernoulli(torch.full(({batch}, 784), 0.5))
model.log_likelihood(x, num_samples=2)  # libraries loaded, first buffers allocated
base = peak_kib()
model.log_likelihood(x, num_samples={k}, chunk_size={chunk})
print(base, peak_kib())
"""


def memory_vs_k(ks, batch: int, chunk_size: int | None = None) -> list[dict]:
    """Memory the IW bound of ``lvae_mnist`` takes above the model's own, per K: on a CPU the growth of the
    peak resident set of a fresh process (a process's peak only grows, so each K gets its own), on CUDA the
    allocator's peak over what was allocated before the call."""
    out = []
    for k in ks:
        if _DEVICE.type == "cuda":
            model = hvae.build_model(hvae.presets.lvae_mnist()).to(_DEVICE).eval()
            x = _binary_batch(batch, [784])
            torch.cuda.synchronize(_DEVICE)
            base = torch.cuda.memory_allocated(_DEVICE)
            torch.cuda.reset_peak_memory_stats(_DEVICE)
            model.log_likelihood(x, num_samples=k, chunk_size=chunk_size)
            extra = (torch.cuda.max_memory_allocated(_DEVICE) - base) / 2**20
        else:
            script = _MEMORY_SCRIPT.format(threads=torch.get_num_threads(), batch=batch, k=k, chunk=chunk_size)
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            base, peak = map(int, done.stdout.split())
            extra = (peak - base) / 1024
        out.append({"K": k, "batch": batch, "chunk_size": chunk_size, "extra_memory_mb": extra})
    return out


def depth_scaling(depths, batch: int, min_time: float) -> list[dict]:
    out = []
    for L in depths:
        cfg = hvae.ModelConfig(data_shape=[784], latent_dims=[32] * L, hidden_dims=[256] * L)
        model = hvae.build_model(cfg).to(_DEVICE)
        opt = hvae.make_optimizer(model)
        x = _binary_batch(batch, [784])

        step = functools.partial(_train_step, model, opt, x)
        out.append({"layers": L, "step_ms": 1e3 * _steady(step, min_time)})
    return out


QUALITY_MODELS = ("lvae_mnist", "lvae_mnist bottom_up", "plain yardstick")
#: the quality models that are not presets (:func:`_quality_seed` builds them)
BUILT_HERE = ("plain yardstick", "lvae_mnist bottom_up")


def quality(
    budget_s: float,
    num_samples: int,
    test_examples: int | None,
    data_cfg: dict,
    models: tuple[str, ...] = QUALITY_MODELS,
    batch_size: int = 256,
    seeds: tuple[int, ...] = (0,),
) -> list[dict]:
    """Train each model for ``budget_s`` seconds of its own wall clock, the models taking turns of a few seconds
    (:func:`train_interleaved`), then the IW bound on the test split; once per seed in ``seeds`` (the seed of
    the initialisation and of the training noise; data order and the test set's binarisation stay fixed). One
    row per model and seed.

    ``models``: "plain yardstick", "lvae_mnist bottom_up" or any preset name (its data shape is set to the
    data's; image presets see the flattened pixels reshaped to (1, 28, 28)), then optionally " bf16": it trains
    under bf16 autocast (``train.precision: bf16``) and is evaluated in float32 like every other; then
    optionally " @B": it trains at batch size B instead of ``batch_size`` (e.g. "lvae_mnist bf16 @1024")."""
    from hvae.data import DataConfig, load_dataset

    ds = load_dataset(DataConfig.from_dict(data_cfg))
    x_test = (ds.eval_tensor("test")[:test_examples] if test_examples else ds.eval_tensor("test")).to(_DEVICE)
    rows = []
    for seed in seeds:
        rows += _quality_seed(seed, budget_s, num_samples, ds, x_test, models, batch_size)
    return rows


#: seconds of one model's turn in the quality comparison: long against a step, short against machine drift
TURN_S = 5.0


@dataclass
class Contender:
    """One model of the quality comparison, as :func:`train_interleaved` runs it: ``step()`` trains one batch,
    ``resume()`` runs before each of its turns, ``rng`` is its own random-number stream (:func:`_rng_state`),
    so the noise a model draws does not depend on how the turns fell."""

    step: Callable[[], None]
    resume: Callable[[], None] = lambda: None
    rng: tuple | None = None


def _rng_state() -> tuple:
    """The state of the generators the benchmark device draws from (the CPU's, and the GPU's on CUDA)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(_DEVICE) if _DEVICE.type == "cuda" else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], _DEVICE)


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
                _set_rng_state(c.rng)
            c.resume()
            _sync()
            start = clock()
            turn = min(turn_s, budget_s - used[name])
            while True:
                c.step()
                steps[name] += 1
                _sync()
                if clock() - start >= turn:
                    break
            used[name] += clock() - start
            if c.rng is not None:
                c.rng = _rng_state()
    return {name: {"steps": steps[name], "train_s": used[name]} for name in contenders}


def _batches_forever(ds, batch_size: int, shape):
    """The training batches epoch after epoch (each epoch its own order and binarisation), reshaped."""
    for epoch in itertools.count():
        for x in ds.batches("train", batch_size, epoch=epoch, device=_DEVICE):
            yield x.view(-1, *shape)


def quality_model_name(name: str, batch_size: int) -> tuple[str, bool, int]:
    """A quality model's name read as (model, trains in bf16, batch size): "<model>[ bf16][ @B]"."""
    base, batch = name, batch_size
    head, sep, tail = name.rpartition(" @")
    if sep:
        if not tail.isdigit() or int(tail) < 1:
            raise ValueError(f"quality model {name!r}: the batch size after '@' must be a positive integer")
        base, batch = head, int(tail)
    return base.removesuffix(" bf16"), base.endswith(" bf16"), batch


def _quality_seed(seed, budget_s, num_samples, ds, x_test, models, batch_size) -> list[dict]:
    D = x_test.shape[1]
    side = math.isqrt(D)
    built, contenders = {}, {}
    for name in models:
        torch.manual_seed(seed)
        shape = [D]
        base, bf16, batch = quality_model_name(name, batch_size)
        if base == "plain yardstick":
            model, plain = PlainLVAE(D), True
        elif base == "lvae_mnist bottom_up":
            model, plain = hvae.build_model(hvae.presets.lvae_mnist(data_shape=[D], inference="bottom_up")), False
        else:
            cfg = hvae.presets.get(base)
            shape = [D] if len(cfg.data_shape) == 1 else [1, side, side]
            model, plain = hvae.build_model(cfg.replace(data_shape=shape)), False
        model = model.to(_DEVICE).train()
        opt = hvae.make_optimizer(model, lr=1e-3)
        batches = _batches_forever(ds, batch, shape)
        built[name] = model, plain, shape, batch
        contenders[name] = Contender(
            step=lambda m=model, o=opt, b=batches, p=plain, h=bf16: _train_step(m, o, next(b), p, h),
            # the compile policy times steps as the clock between two calls: a turn starts its clock afresh
            resume=(lambda: None) if plain else model.compiler.other_call,
            rng=_rng_state(),
        )
    trained = train_interleaved(contenders, budget_s)
    rows, bounds = [], {}
    for name, (model, plain, shape, batch) in built.items():
        model.eval()
        torch.manual_seed(1)
        x_eval = x_test.view(-1, *shape)
        iw = torch.cat([model.log_likelihood(xb, num_samples=num_samples) for xb in x_eval.split(50)])
        bounds[name] = iw
        steps = trained[name]["steps"]
        row = {
            "model": name,
            "seed": seed,
            "steps": steps,
            "train_s": round(trained[name]["train_s"], 1),
            "batch_size": batch,
            "epochs": round(steps / ds.num_batches("train", batch), 2),
            "iw_bound": iw.mean().item(),
            "iw_stderr": iw.std().item() / math.sqrt(len(iw)),
            "test_examples": len(iw),
            "K": num_samples,
        }
        if not plain:
            from hvae.evaluate import active_units

            au, units, _ = active_units(model, x_eval[:2000])
            row["active_units"] = au
            row["compile"] = model.compiler.status  # compile: auto, as a user's loop gets it
        rows.append(row)
    if "plain yardstick" in bounds:  # every model scores the same images: the difference's spread is paired
        for row in rows:
            if row["model"] != "plain yardstick":
                diff = bounds[row["model"]] - bounds["plain yardstick"]
                row["vs_yardstick"] = diff.mean().item()
                row["vs_yardstick_stderr"] = diff.std().item() / math.sqrt(len(diff))
    return rows


def quality_over_seeds(rows: list[dict]) -> list[dict]:
    """Per model, the mean over seeds of its steps, bound and difference from the yardstick, with the standard
    error over seeds of that difference (what a single run's paired error leaves out: how much training
    from another initialisation and noise moves the result)."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        runs = [r for r in rows if r["model"] == name]
        row = {
            "model": name,
            "seeds": [r.get("seed", 0) for r in runs],
            "steps": statistics.mean(r["steps"] for r in runs),
            "iw_bound": statistics.mean(r["iw_bound"] for r in runs),
        }
        diffs = [r["vs_yardstick"] for r in runs if "vs_yardstick" in r]
        if diffs:
            row["vs_yardstick"] = statistics.mean(diffs)
            row["vs_yardstick_per_seed"] = diffs
            if len(diffs) > 1:
                row["vs_yardstick_stderr_seeds"] = statistics.stdev(diffs) / math.sqrt(len(diffs))
        out.append(row)
    return out


def run(
    smoke: bool = False,
    with_quality: bool = False,
    budget_s: float = 900.0,
    out: Path | None = None,
    device: str = "cpu",
    seeds: int = 1,
    quality_models: tuple[str, ...] = QUALITY_MODELS,
    num_samples: int = 1000,
    test_examples: int | None = None,
) -> dict:
    global _DEVICE
    _DEVICE = torch.device(device)
    min_time = 0.02 if smoke else 3.0
    start = cpu_ticks()
    res: dict = {"machine": machine(), "smoke": smoke, "device": str(_DEVICE)}
    if _DEVICE.type == "cuda":
        res["machine"]["gpu"] = torch.cuda.get_device_name(_DEVICE)
    side = 256 if smoke else 2048 if _DEVICE.type == "cpu" else 8192
    res["roofline_gflops"] = matmul_roofline(side, _DEVICE)
    res["roofline_bf16_gflops"] = matmul_roofline(side, _DEVICE, torch.bfloat16)
    lvae = hvae.presets.lvae_mnist()
    train = []
    for batch in [8] if smoke else [256, 1024]:
        # fp32, then bf16 autocast (train.precision: bf16): each eager, then compiled from the first step
        # (train.compile: always; auto compiles after 5 min) with the eager row's floor
        for bf16 in (False, True):
            suffix = " bf16" if bf16 else ""
            torch.manual_seed(0)
            model = hvae.build_model(lvae)
            model.set_compile("never")
            train.append(train_throughput("lvae_mnist" + suffix, model, batch, [784], min_time, bf16=bf16))
            if not smoke:
                torch.manual_seed(0)
                model = hvae.build_model(lvae)
                model.set_compile("always")
                row = train_throughput(
                    "lvae_mnist compiled" + suffix, model, batch, [784], min_time, floor_of=train[-1], bf16=bf16
                )
                train.append(row)
    bs = 8 if smoke else 256
    train.append(
        train_throughput(
            "lvae_mnist bottom_up", hvae.build_model(lvae.replace(inference="bottom_up")), bs, [784], min_time
        )
    )
    train.append(train_throughput("plain yardstick", PlainLVAE(), bs, [784], min_time, plain=True))
    # the other model families, each at a batch that suits its size on a CPU
    for preset, batch in (
        ("conv_small", 256),
        ("lvae_discrete", 256),
        ("nvae_small", 32),
        ("vdvae_small", 32),
        ("attentive", 32),
        ("pixelvae", 32),
    ):
        cfg = hvae.presets.get(preset)
        torch.manual_seed(0)
        train.append(train_throughput(preset, hvae.build_model(cfg), 4 if smoke else batch, cfg.data_shape, min_time))
    res["train"] = train
    res["paired"] = paired_speed(8 if smoke else 256, 2 if smoke else 8, 2 if smoke else 20, compiled=not smoke)
    model = hvae.build_model(lvae)
    model.set_compile("never")
    res["iw"] = iw_eval(model, 2 if smoke else 10, 50 if smoke else 5000, None, min_time)
    if not smoke:  # its full chunks compiled from the first call (auto compiles after 5 minutes of them)
        compiled = hvae.build_model(lvae)
        compiled.load_state_dict(model.state_dict())
        compiled.set_compile("always")
        res["iw_compiled"] = iw_eval(compiled, 10, 5000, None, min_time, floor_of=res["iw"])
        res["paired_iw"] = paired_iw(model, compiled, 10, 5000, 6)
    res["memory_vs_k"] = memory_vs_k([10] if smoke else [100, 1000, 5000, 20000], 2 if smoke else 10)
    if not smoke:
        res["memory_before"] = memory_vs_k([5000], 10, chunk_size=32768 // 10)[0]
    res["depth"] = depth_scaling([2, 3] if smoke else [2, 4, 6, 8, 10, 12], 8 if smoke else 256, min_time)
    if with_quality or smoke:
        data = (
            {"source": "digits", "flatten": True, "binarize": "dynamic"}
            if smoke
            else {"source": "fashion_mnist", "flatten": True, "binarize": "dynamic", "val_fraction": 0.0}
        )
        res["quality"] = quality(
            0.3 if smoke else budget_s,
            10 if smoke else num_samples,
            20 if smoke else test_examples,
            data,
            quality_models,
            seeds=tuple(range(seeds)),
        )
        res["quality_budget_s"] = 0.3 if smoke else budget_s
    res["machine"]["cpu_stolen"] = stolen_share(start, cpu_ticks())
    res = _public(res)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / ("smoke.json" if smoke else "latest.json")).write_text(json.dumps(res, indent=1))
    return res


def _public(res):
    """``res`` without the keys that start with ``_`` (what a row keeps for the rows after it: recorded
    products, which are not JSON)."""
    if isinstance(res, dict):
        return {k: _public(v) for k, v in res.items() if not k.startswith("_")}
    if isinstance(res, list):
        return [_public(v) for v in res]
    return res


def _paired_iw_lines(pr: dict) -> list[str]:
    rates = pr["samples_per_s"]
    base = rates["32,768 rows per chunk (before)"]
    return [
        f"The same bound three ways, interleaved in one process ({pr['batch']} inputs, K = {pr['K']}, "
        f"{pr['rounds']} rounds, medians; compile: {pr['compile']}):",
        "",
        "| chunks | importance samples/s | against the chunks before |",
        "|---|---:|---:|",
        *(f"| {name} | {r:,.0f} | {r / base:.2f}x |" for name, r in rates.items()),
        "",
    ]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _written(r: dict, rate: str) -> str:
    """The two cells of the floor as written: its rate, and the fraction of it the row reaches."""
    w = r.get(f"written_floor_{rate}")
    return "— | —" if w is None else f"{w:,.0f} | {r['fraction_of_written_floor']:.0%}"


def tables(res: dict) -> str:
    m = res["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['threads']} threads"
    peak = res["roofline_gflops"]
    lines = [
        f"Measured {m['date']} at commit {m['commit']} on {where}, torch {m['torch']}, float32. Large-matrix "
        f"roofline: {peak:.0f} GFLOP/s"
        + (f" (bf16: {res['roofline_bf16_gflops']:.0f} GFLOP/s)." if "roofline_bf16_gflops" in res else "."),
        "Rows marked bf16 train under bf16 autocast (`train.precision: bf16`): their floor is their own products"
        " in bf16, their fraction of roofline is of the bf16 roofline.",
        "CPU stolen: the share of the machine's CPU time its hypervisor gave to other work while a row was timed"
        " (`steal` in /proc/stat; — where the machine does not say); a row with much of it reads slow. A row"
        f" timed while it took over {QUIET_STOLEN:.0%} was timed once more, and the timing with the smaller share"
        " kept" + (f". Over the whole run: {_pct(m['cpu_stolen'])}." if m.get("cpu_stolen") is not None else "."),
        "",
        "### Training (forward + backward + Adam step, public API)",
        "",
        "| model | batch | images/s | GFLOP/s | MFLOP/image | fraction of roofline | floor images/s "
        "| fraction of floor | ceiling | optimizer ms | reachable | floor as written, images/s | fraction of it "
        "| CPU stolen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["train"]:
        top = res["roofline_bf16_gflops"] if r.get("precision") == "bf16" else peak
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['images_per_s']:,.0f} | {r['gflops_per_s']:.1f} | "
            f"{r['mflop_per_image']:.2f} | {r['gflops_per_s'] / top:.0%} | {r['floor_images_per_s']:,.0f} | "
            f"{r['fraction_of_floor']:.0%} | {_pct(r.get('ceiling'))} | {_ms(r.get('optimizer_ms'))} | "
            f"{_pct(r.get('reachable'))} | {_written(r, 'images_per_s')} | "
            f"{_pct(r.get('cpu_stolen'))} |"
        )
    if "paired" in res:
        pr = res["paired"]
        lines += [
            "",
            f"hvae against the yardstick, interleaved in one process (batch {pr['batch']}, {pr['rounds']} rounds of "
            f"{pr['block']} steps each, medians):",
            "",
            "| model | ms/step | images/s | speed-up over the yardstick |",
            "|---|---:|---:|---:|",
        ]
        for name, t in pr["step_ms"].items():
            lines.append(
                f"| {name} | {t:.1f} | {1e3 * pr['batch'] / t:,.0f} | {pr['speedup_vs_yardstick'][name]:.2f}x |"
            )
    iw = res["iw"]
    lines += [
        "",
        "### Importance-weighted evaluation (lvae_mnist)",
        "",
        "| chunks | inputs | K | importance samples/s | fraction of floor | ceiling "
        "| floor as written, samples/s | fraction of it | CPU stolen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {'compiled' if r.get('compile') == 'compiled' else 'eager'} | {r['batch']} | {r['K']} | "
            f"{r['samples_per_s']:,.0f} | {r['fraction_of_floor']:.0%} | {_pct(r.get('ceiling'))} | "
            f"{_written(r, 'samples_per_s')} | {_pct(r.get('cpu_stolen'))} |"
            for r in (iw, res.get("iw_compiled"))
            if r is not None
        ),
        "",
        *(_paired_iw_lines(res["paired_iw"]) if "paired_iw" in res else []),
        f"Memory the bound takes above the model's own, against K ({res['memory_vs_k'][0]['batch']} inputs, "
        "automatic chunks): "
        + ", ".join(f"K={r['K']}: {r['extra_memory_mb']:.0f} MB" for r in res["memory_vs_k"])
        + (
            f"; with 32,768 rows per chunk (before) K={res['memory_before']['K']}: "
            f"{res['memory_before']['extra_memory_mb']:.0f} MB."
            if "memory_before" in res
            else "."
        ),
        "",
        "### Time per training step against depth (latent 32, hidden 256 per level)",
        "",
        "| levels | " + " | ".join(str(r["layers"]) for r in res["depth"]) + " |",
        "|---|" + "---:|" * len(res["depth"]),
        "| ms/step | " + " | ".join(f"{r['step_ms']:.1f}" for r in res["depth"]) + " |",
    ]
    if "quality" in res:
        lines += quality_lines(res)
    return "\n".join(lines)


def quality_lines(res: dict) -> list[str]:
    """The quality-per-budget tables: one row per model and seed, then the means over seeds."""
    q = res["quality"]
    lines = [
        "",
        f"### Quality per budget ({res['quality_budget_s'] / 60:.1f} min of training each"
        + (f", the models taking turns of {TURN_S:.0f} s" if "train_s" in res["quality"][0] else "")
        + ", dynamically binarised, test set binarised once with a fixed seed)",
        "",
        *(
            [f"Measured {res['quality_from']} (this run did not repeat it: `--quality`).", ""]
            if "quality_from" in res
            else []
        ),
        "| model | seed | steps | epochs | IW bound (nats) | against the yardstick (paired) | K | test images "
        "| active units per level | compile |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in q:
        paired = f"{r['vs_yardstick']:+.2f} ± {r['vs_yardstick_stderr']:.2f}" if "vs_yardstick" in r else "—"
        lines.append(
            f"| {r['model']} | {r.get('seed', 0)} | {r['steps']} | {r['epochs']} | {r['iw_bound']:.2f} ± "
            f"{r['iw_stderr']:.2f} | {paired} | {r['K']} | {r['test_examples']} | {r.get('active_units', '—')} | "
            f"{r.get('compile', 'eager')} |"
        )
    if any("vs_yardstick" in r for r in q):
        lines += [
            "",
            "± after a bound: the standard error over test images; against the yardstick: the mean per-image "
            "difference and its standard error (the same images for every model and the same seed: the "
            "seed sets the initialisation and the training noise; one training run per row, so run-to-run "
            "variation is not in it).",
        ]
    summary = quality_over_seeds(q)
    if any(len(r["seeds"]) > 1 for r in summary):
        lines += [
            "",
            "Over seeds (means; ± the standard error over seeds):",
            "",
            "| model | seeds | steps | IW bound (nats) | against the yardstick | per seed |",
            "|---|---|---:|---:|---:|---|",
        ]
        for r in summary:
            vs, per = "—", "—"
            if "vs_yardstick" in r:
                vs = f"{r['vs_yardstick']:+.2f}"
                if "vs_yardstick_stderr_seeds" in r:  # a model trained from one seed has no error over seeds
                    vs += f" ± {r['vs_yardstick_stderr_seeds']:.2f}"
                per = ", ".join(f"{d:+.2f}" for d in r["vs_yardstick_per_seed"])
            seeds = ", ".join(map(str, r["seeds"]))
            lines.append(f"| {r['model']} | {seeds} | {r['steps']:,.0f} | {r['iw_bound']:.2f} | {vs} | {per} |")
    return lines


EXTENSION_MODELS = ("lvae_mnist", "lvae_discrete", "attentive", "pixelvae")
EXT_START, EXT_END = "<!-- extensions:start -->", "<!-- extensions:end -->"


def extensions_table(rows: list[dict], budget_s: float) -> str:
    """The extensions' quality table: each trained for the same wall-clock budget as the Ladder VAE."""
    r0 = rows[0]
    lines = [
        f"{budget_s / 60:.1f} min of training each (batch 32) on dynamically binarised Fashion-MNIST, then the IW "
        f"bound with K = {r0['K']} on {_test_images(r0['test_examples'])} (binarised once with a fixed "
        "seed); the same images for every model.",
        "",
        "| model | steps | epochs | IW bound (nats) | active units per level |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['steps']} | {r['epochs']} | {r['iw_bound']:.2f} ± {r['iw_stderr']:.2f} | "
            f"{r.get('active_units', '—')} |"
        )
    return "\n".join(lines)


def _test_images(n: int) -> str:
    return f"all {n:,} test images" if n == 10_000 else f"the first {n:,} test images"


def _replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def write_results(res: dict, path: Path = HERE / "RESULTS.md") -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    path.write_text(_replace_between(text, START, END, tables(res)))


def keep_quality(res: dict, previous: dict) -> None:
    """A run without ``--quality`` keeps the last quality-per-budget results (an hour of machine time),
    marked with the date and commit they were measured at."""
    if "quality" in res or "quality" not in previous:
        return
    res["quality"], res["quality_budget_s"] = previous["quality"], previous["quality_budget_s"]
    m = previous["machine"]
    res["quality_from"] = previous.get("quality_from") or f"{m['date']} at commit {m['commit']}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every benchmark for a few seconds (the test suite runs this)")
    p.add_argument("--quality", action="store_true", help="also train each model for --budget-min and compare")
    p.add_argument("--budget-min", type=float, default=15.0)
    p.add_argument("--seeds", type=int, default=1, help="--quality: train every model from this many seeds (0, 1, ...)")
    p.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (on a GPU: fractions of the device's peak)")
    p.add_argument(
        "--extensions",
        action="store_true",
        help="only the quality-per-budget table of the extension presets against the Ladder VAE",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(QUALITY_MODELS),
        metavar="NAME",
        help='--quality: the models to compare, each "<model>[ bf16][ @B]" (a preset, "lvae_mnist bottom_up" or '
        '"plain yardstick"; bf16: trained under bf16 autocast; @B: at batch size B)',
    )
    p.add_argument("--num-samples", type=int, default=1000, help="--quality, --extensions: importance samples K")
    p.add_argument(
        "--test-examples", type=int, default=None, help="--quality, --extensions: the first N test images (all)"
    )
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.num_samples < 1 or (args.test_examples is not None and args.test_examples < 1):
        p.error("--num-samples and --test-examples must be >= 1")
    for name in args.models:
        try:
            base = quality_model_name(name, 256)[0]
        except ValueError as e:
            p.error(str(e))
        if base not in (*BUILT_HERE, *hvae.presets.PRESETS):
            p.error(f"--models: unknown model {base!r}; presets: {', '.join(hvae.presets.PRESETS)}")
    if args.extensions and args.seeds != 1:
        p.error("--seeds applies to --quality; --extensions trains every model once")
    if args.extensions:
        global _DEVICE
        _DEVICE = torch.device(args.device)
        data = {"source": "fashion_mnist", "flatten": True, "binarize": "dynamic", "val_fraction": 0.0}
        budget = 60 * args.budget_min
        rows = quality(budget, args.num_samples, args.test_examples, data, EXTENSION_MODELS, batch_size=32)
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "extensions.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
        table = extensions_table(rows, budget)
        print(table)
        if not args.no_write:
            path = HERE / "RESULTS.md"
            path.write_text(_replace_between(path.read_text(), EXT_START, EXT_END, table))
        return
    previous = HERE / "results" / "latest.json"
    previous = json.loads(previous.read_text()) if previous.is_file() else {}
    res = run(
        smoke=args.smoke,
        with_quality=args.quality,
        budget_s=60 * args.budget_min,
        seeds=args.seeds,
        quality_models=tuple(args.models),
        num_samples=args.num_samples,
        test_examples=args.test_examples,
        out=HERE / "results" if args.smoke else None,  # a full run's JSON is written below
        device=args.device,
    )
    if not args.smoke:
        keep_quality(res, previous)
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "latest.json").write_text(json.dumps(res, indent=1))
    print(tables(res))
    if not args.smoke and not args.no_write:
        write_results(res)


if __name__ == "__main__":
    main()
