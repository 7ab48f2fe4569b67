"""What a rank pays to prepare its share of a dynamically binarised batch:

    python -m benchmarks.ddp_batches whole|shard|part [--ranks 2] [--batch 256]

Synthetic 8-bit data (10,240 rows of 784 values, as MNIST), ``binarize: dynamic``, one thread. ``whole``: the
global batch, as one process prepares it; ``shard``: the global batch, then rank 0's slice (what every rank
did before ``Dataset.batches(part=...)``); ``part``: rank 0's rows alone (``part=(0, N)``; needs an hvae with
it). Prints one JSON line: milliseconds per batch over three epochs (after one untimed). To compare versions,
run it with ``PYTHONPATH`` on each checkout's ``src``, taking turns.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hvae.data import DataConfig, load_dataset
from hvae.distributed import Context, shard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["whole", "shard", "part"])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, np.random.default_rng(0).integers(0, 256, (10240, 784), dtype=np.uint8))
        cfg = DataConfig(source="npy", path=str(path), binarize="dynamic", val_fraction=0.0, test_fraction=0.01)
        d = load_dataset(cfg)
        rank0 = Context(0, args.ranks)

        def epoch(e: int) -> int:
            if args.mode == "part":
                return sum(len(x) for x in d.batches("train", args.batch, epoch=e, part=(0, args.ranks)))
            whole = d.batches("train", args.batch, epoch=e)
            return sum(len(shard(x, rank0) if args.mode == "shard" else x) for x in whole)

        epoch(0)
        t = time.perf_counter()
        rows = sum(epoch(e) for e in (1, 2, 3))
        ms = 1e3 * (time.perf_counter() - t) / (3 * d.num_batches("train", args.batch))
    print(json.dumps({"mode": args.mode, "ranks": args.ranks, "ms_per_batch": round(ms, 2), "rows": rows}))


if __name__ == "__main__":
    main()
