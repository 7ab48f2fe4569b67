"""The suites of hvae's benchmarks: what is measured, each a function returning its rows as dicts.

:func:`run` runs them all (``--smoke``: each for a moment): training throughput against the compute floor
(:func:`train_throughput`), hvae against the plain yardstick interleaved (:func:`paired_speed`), the IW
bound's rate and memory (:func:`iw_eval`, :func:`paired_iw`, :func:`memory_vs_k`), time per step against
depth (:func:`depth_scaling`) and the IW bound reached for a wall-clock budget (:func:`quality`). The timing
itself is :mod:`benchmarks.harness`'s; the tables written from the rows are :mod:`benchmarks.tables`'.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

import hvae
from benchmarks import harness
from benchmarks.floor import as_written, floor_of_other, matmul_roofline, products_in_situ, record_products
from benchmarks.harness import (
    Contender,
    batches_forever,
    binary_batch,
    count_flops,
    cpu_ticks,
    floor_beside,
    interleaved,
    machine,
    optimizer_seconds,
    rng_state,
    steady,
    stolen_share,
    train_interleaved,
    train_step,
    use_device,
    written_extra,
    written_fraction,
    written_rounds,
)
from benchmarks.plain_lvae import PlainLVAE


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
    model = model.to(harness.DEVICE).train()
    x = binary_batch(batch, shape)
    opt = hvae.make_optimizer(model, lr=1e-4)

    step = functools.partial(train_step, model, opt, x, plain, bf16)
    step()  # a compiled model compiles here
    if floor_of is None:
        products = record_products(step)
        flops = count_flops(step)
        extra = None if plain else written_extra(model, x, bf16, products, min_time)
    else:  # a compiled step hides its products: the eager row's, timed again beside this step
        products, extra = floor_of["_products"], floor_of["_written_extra"]
        flops = floor_of["mflop_per_image"] * 1e6 * batch
    for _ in range(10):
        step()
    timed = floor_beside(products, step, min_time, packed=False)
    sec, floor = timed["seconds"], timed["floor_seconds"]
    in_situ = products_in_situ(step, max(3, round(min_time / sec)), harness.DEVICE) if floor_of is None else None
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
        "fraction_of_written_floor": written_fraction(timed, extra),
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


def paired_iw(eager, compiled, batch: int, num_samples: int, rounds: int) -> dict:
    """Importance samples/s of the IW bound of one ``lvae_mnist`` three ways, interleaved (see
    :func:`paired_speed`): automatic chunks eager (``eager``), the same compiled (``compiled``, the same
    weights), and the fixed chunks of 32,768 rows per pass that ``log_likelihood`` used before it sized them
    (the before/after of RESULTS.md)."""
    x = binary_batch(batch, [784])
    fns = {
        "automatic chunks": lambda: eager.log_likelihood(x, num_samples=num_samples),
        "automatic chunks, compiled": lambda: compiled.log_likelihood(x, num_samples=num_samples),
        "32,768 rows per chunk (before)": lambda: eager.log_likelihood(
            x, num_samples=num_samples, chunk_size=max(1, 32768 // batch)
        ),
    }
    for fn in fns.values():  # warm (the compiled model compiled in iw_eval, for these shapes)
        fn()
    sec = interleaved(fns, rounds, 1)
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
    x = binary_batch(batch, [784])
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
        model = model.to(harness.DEVICE).train()
        opt = hvae.make_optimizer(model, lr=1e-4)

        step = functools.partial(train_step, model, opt, x, plain)
        for _ in range(5):  # the compiled contender compiles here
            step()
        steps[name] = step
    ms = {name: 1e3 * sec for name, sec in interleaved(steps, rounds, block).items()}
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
    model = model.to(harness.DEVICE).eval()
    x = binary_batch(batch, model.data_shape)

    def run():
        model.log_likelihood(x, num_samples=num_samples, chunk_size=chunk_size)

    run()  # a compiled model compiles here
    if floor_of is None:
        products = record_products(run)  # each product at its faster kernel: torch's, or MKL's on packed weights
        twin, split = as_written(model)  # the model as written: a mean map and a scale map per Gaussian head
        extra = None
        if split:
            twin_run = record_products(lambda: twin.log_likelihood(x, num_samples, chunk_size=chunk_size))
            rounds = written_rounds(min_time)
            extra = floor_of_other(0.0, products, twin_run, harness.DEVICE, min(0.05, min_time / 4), rounds, True)
    else:  # a compiled chunk hides its products: the eager row's, timed again beside this bound
        products, extra = floor_of["_products"], floor_of["_written_extra"]
    timed = floor_beside(products, run, min_time, packed=True)
    sec, floor = timed["seconds"], timed["floor_seconds"]
    in_situ = products_in_situ(run, max(1, round(min_time / sec)), harness.DEVICE) if floor_of is None else None
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
        "fraction_of_written_floor": written_fraction(timed, extra),
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
        if harness.DEVICE.type == "cuda":
            model = hvae.build_model(hvae.presets.lvae_mnist()).to(harness.DEVICE).eval()
            x = binary_batch(batch, [784])
            torch.cuda.synchronize(harness.DEVICE)
            base = torch.cuda.memory_allocated(harness.DEVICE)
            torch.cuda.reset_peak_memory_stats(harness.DEVICE)
            model.log_likelihood(x, num_samples=k, chunk_size=chunk_size)
            extra = (torch.cuda.max_memory_allocated(harness.DEVICE) - base) / 2**20
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
        model = hvae.build_model(cfg).to(harness.DEVICE)
        opt = hvae.make_optimizer(model)
        x = binary_batch(batch, [784])

        step = functools.partial(train_step, model, opt, x)
        out.append({"layers": L, "step_ms": 1e3 * steady(step, min_time)})
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
    x_test = (ds.eval_tensor("test")[:test_examples] if test_examples else ds.eval_tensor("test")).to(harness.DEVICE)
    rows = []
    for seed in seeds:
        rows += _quality_seed(seed, budget_s, num_samples, ds, x_test, models, batch_size)
    return rows


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
        model = model.to(harness.DEVICE).train()
        opt = hvae.make_optimizer(model, lr=1e-3)
        batches = batches_forever(ds, batch, shape)
        built[name] = model, plain, shape, batch
        contenders[name] = Contender(
            step=lambda m=model, o=opt, b=batches, p=plain, h=bf16: train_step(m, o, next(b), p, h),
            # the compile policy times steps as the clock between two calls: a turn starts its clock afresh
            resume=(lambda: None) if plain else model.compiler.other_call,
            rng=rng_state(),
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
    use_device(device)
    min_time = 0.02 if smoke else 3.0
    start = cpu_ticks()
    res: dict = {"machine": machine(), "smoke": smoke, "device": str(harness.DEVICE)}
    if harness.DEVICE.type == "cuda":
        res["machine"]["gpu"] = torch.cuda.get_device_name(harness.DEVICE)
    side = 256 if smoke else 2048 if harness.DEVICE.type == "cpu" else 8192
    roofline_s = 0.1 if smoke else 1.0
    res["roofline_gflops"] = matmul_roofline(side, harness.DEVICE, min_run_time=roofline_s)
    res["roofline_bf16_gflops"] = matmul_roofline(side, harness.DEVICE, torch.bfloat16, roofline_s)
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


EXTENSION_MODELS = ("lvae_mnist", "lvae_discrete", "attentive", "pixelvae")
