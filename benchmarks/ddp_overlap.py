"""Does DDP's gradient all-reduce overlap the backward pass, eager and compiled? Two gloo ranks on the CPU:

    torchrun --standalone --nproc_per_node 2 -m benchmarks.ddp_overlap [--steps 40] [--batch 256]

Both ranks train the ``lvae_mnist`` preset (free bits on, so the objectives' own all-reduce runs as well) with
the trainer's step (:func:`hvae.train.train_step` through a ``DistributedDataParallel`` wrapper built as
``hvae train`` builds it), on three copies of the model: eager (``set_compile("never")``), compiled
(``"always"``) as hvae compiles it, and compiled with dynamo's DDPOptimizer turned off for its compile
(``torch._dynamo.config.optimize_ddp=False``: one graph, what a lost overlap looks like), taking turns of 5
steps after the compiled ones' first steps (the compiles). For every step:

* a DDP communication hook (the default all-reduce, timed) records the host time each gradient bucket is
  handed to gloo and the time its all-reduce completes;
* ``Tensor.backward`` is timed from its call to its return (DDP's backward returns once every bucket's
  all-reduce is done) and each parameter's post-accumulate-grad hook gives the time the last gradient was
  computed (the backward's compute ends there);

and prints per mode the medians over its steps: buckets, the backward's compute (ms), the all-reduces' time
(launch to completion, summed over buckets, ms), the share of that time inside the compute (overlap), and the
exposed communication (from the last gradient to the backward's return, ms). Rank 0 prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import hvae
from hvae.distributed import Context
from hvae.optim import make_optimizer
from hvae.train import train_step

MODES = ("eager", "compiled", "compiled, DDPOptimizer off")


class _Timeline:
    """Host times of one backward: its call, its return, the last gradient, and each bucket's all-reduce."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = self.end = self.last_grad = 0.0
        self.buckets: list[list[float]] = []  # [launched, completed]

    def hook(self, state, bucket):
        entry = [time.perf_counter(), 0.0]
        self.buckets.append(entry)
        fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True).get_future()

        def done(f):
            entry[1] = time.perf_counter()
            return f.value()[0]

        return fut.then(done)

    def step(self) -> dict[str, float]:
        compute = self.last_grad - self.start
        comm = sum(b - a for a, b in self.buckets)
        inside = sum(max(0.0, min(b, self.last_grad) - a) for a, b in self.buckets)
        return {
            "buckets": len(self.buckets),
            "launched_before_last_grad": sum(a < self.last_grad - 1e-4 for a, _ in self.buckets),
            "backward_compute_ms": 1e3 * compute,
            "allreduce_ms": 1e3 * comm,
            "overlap": inside / comm if comm > 0 else 0.0,
            "exposed_ms": 1e3 * (self.end - self.last_grad),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per mode")
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--preset", default="lvae_mnist")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    ctx = Context(rank, world)
    timeline = _Timeline()
    real_backward = torch.Tensor.backward

    def timed_backward(self, *a, **k):
        timeline.start = time.perf_counter()
        real_backward(self, *a, **k)
        timeline.end = time.perf_counter()

    torch.Tensor.backward = timed_backward  # type: ignore[method-assign]
    cfg = getattr(hvae.presets, args.preset)()
    cfg.free_bits = 0.5
    jobs = {}
    for mode in MODES:
        torch.manual_seed(0)
        model = hvae.build_model(cfg).train()
        model.set_compile("never" if mode == "eager" else "always")
        if mode == MODES[2]:
            # a code object of its own: dynamo keeps compiled graphs per code object and would reuse the first
            # model's split graph
            fn = model.compiler.fn
            model.compiler.fn = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__)
        model.batch_sum = ctx.all_sum
        ddp = DistributedDataParallel(model)
        ddp.register_comm_hook(None, timeline.hook)
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(lambda p: setattr(timeline, "last_grad", time.perf_counter()))
        jobs[mode] = (model, ddp, make_optimizer(model, lr=1e-3), [])
    gen = torch.Generator().manual_seed(rank)
    x = torch.bernoulli(torch.rand(args.batch // world, *cfg.data_shape, generator=gen))
    compile_s = {}
    for mode in MODES[1:]:
        t = time.perf_counter()
        model, ddp, opt, _ = jobs[mode]
        with torch._dynamo.config.patch(optimize_ddp=mode == "compiled"):
            train_step(model, opt, x, forward=ddp, ctx=ctx)  # the compile
        compile_s[mode] = round(time.perf_counter() - t, 1)
    for _ in range(args.steps // 5):
        for model, ddp, opt, steps in jobs.values():
            for _ in range(5):
                timeline.reset()
                train_step(model, opt, x, forward=ddp, ctx=ctx)
                steps.append(timeline.step())
    if rank == 0:
        out = {"preset": args.preset, "global_batch": args.batch, "ranks": world, "compile_s": compile_s}
        out["status"] = {m: jobs[m][0].compiler.status for m in MODES}
        for mode, (*_, steps) in jobs.items():
            out[mode] = {k: round(statistics.median(s[k] for s in steps), 3) for k in steps[0]}
        print(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
