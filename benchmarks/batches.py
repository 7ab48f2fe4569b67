"""What a training batch costs to prepare: ``python -m benchmarks.batches [--config C] [--reps 400] [--device cuda]``.

One batch of ``hvae train``'s loop is gathered from the split by index, converted to float32 and, for dynamic
binarization, drawn from Bernoulli(x). This times, per batch (median over ``--reps``), the draw the trainer used
before (``torch.bernoulli``: one 32-bit draw per value in a serial loop) against the whole ``Dataset.batches``
step as the trainer calls it (numpy's Philox uniforms compared with x by numpy), interleaved rep by rep so that
drift on a shared machine hits both alike. With ``--device cuda`` each is followed by the copy to the device
that the trainer makes (pinned, non-blocking, then synchronised). Prints JSON and a table for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from hvae.data import load_dataset, transforms
from hvae.runconfig import load_run_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fashion_mnist.yaml")
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg, _ = load_run_config(args.config)
    data = load_dataset(cfg.data)
    split, bs = data.train, args.batch_size
    device = torch.device(args.device)
    order = torch.randperm(len(split), generator=transforms.generator(0, "bench"))

    def rows(r: int) -> torch.Tensor:
        lo = (r * bs) % (len(split) - bs)
        return split.rows(order[lo : lo + bs])

    def to_device(x: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
            torch.cuda.synchronize(device)
        return x

    batches = data.batches("train", bs, epoch=0)
    contenders = {
        "gather + float32 only (no draw)": lambda r: to_device(rows(r)),
        "torch.bernoulli (before)": lambda r: to_device(transforms.binarize(rows(r), transforms.generator(0, r))),
        "Dataset.batches, one batch (now)": lambda r: to_device(next(batches)),
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(args.reps + 10):
        for name, f in contenders.items():
            if name.startswith("Dataset") and (r + 1) * bs > len(split) - bs:
                batches = data.batches("train", bs, epoch=r)  # a fresh epoch before this one runs out
            t0 = time.perf_counter()
            f(r)
            if r >= 10:  # warm-up: allocator, first pinned buffers
                times[name].append(time.perf_counter() - t0)
    shape = (bs, *split.shape)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(json.dumps({"shape": shape, "device": str(device), "threads": torch.get_num_threads(), "ms": med}))
    before = med["torch.bernoulli (before)"]
    print(f"\n| batch {shape}, {device}, {torch.get_num_threads()} threads | ms per batch (median) | of before |")
    print("|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m:.3f} | {100 * m / before:.0f}% |")


if __name__ == "__main__":
    main()
