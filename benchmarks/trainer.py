"""The trainer against its own step: ``python -m benchmarks.trainer [--rounds 2] [--steps 600]``.

Runs the real ``hvae train`` command (a subprocess, compilation off) on ``--config`` and reads its
steady-state updates/s from its metrics (the train records' ``time`` between step ``--skip`` and the last
record: validation, checkpoints, batch preparation and logging included, start-up and the final save not),
interleaved round by round with the bare public-API step on the same model, batch and precision
(``model(x).loss.backward(); opt.step(); opt.zero_grad()`` on batches prepared before the clock starts, also
in a subprocess of its own). Each trainer variant is a list of ``key=value`` overrides. Prints one JSON line
per run and a table (median over rounds) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "hvae train (as configured)": [],
    "hvae train, validation and checkpoints at every epoch's end": [
        "train.eval_every_s=null",
        "train.checkpoint_every_s=null",
    ],
}
BEFORE = "hvae train before this branch (--before SRC, as configured)"


def bare(config: str, steps: int, skip: int) -> float:
    """Updates/s of the bare public-API step on ready batches (the first ``skip`` steps not timed)."""
    import torch

    from hvae.data import load_dataset
    from hvae.model import build_model
    from hvae.optim import make_optimizer
    from hvae.runconfig import load_run_config

    cfg, _ = load_run_config(config)
    tc = cfg.train
    torch.manual_seed(tc.seed)
    data = load_dataset(cfg.data)
    batches = []
    for epoch in range(1000):
        for x in data.batches("train", tc.batch_size, epoch=epoch):
            batches.append(x)
            if len(batches) == steps:
                break
        if len(batches) == steps:
            break
    model = build_model(cfg.model).train()
    opt = make_optimizer(model, lr=tc.lr, name=tc.optimizer, weight_decay=tc.weight_decay)
    for i, x in enumerate(batches):
        if i == skip:
            t0 = time.perf_counter()
        model(x).loss.backward()
        opt.step()
        opt.zero_grad()
    return (steps - skip) / (time.perf_counter() - t0)


def trainer(
    config: str, steps: int, skip: int, log_every: int, overrides: list[str], src: str | None = None
) -> tuple[float, dict]:
    """Steady-state updates/s of ``hvae train`` (from its metrics) and its timing record (empty when the
    trainer has none); ``src``: the source tree to import hvae from (default: this process's)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "hvae", "train", "--config", config, "--out", str(out)]
        cmd += [
            f"train.max_steps={steps}",
            "train.compile=never",
            "train.progress=false",
            f"train.log_every={log_every}",
        ]
        cmd += overrides
        env = None if src is None else {**os.environ, "PYTHONPATH": src}
        subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train" and "time" in r]
    first = next(r for r in train if r["step"] >= skip)
    last = train[-1]
    timing = next((r for r in records if r["split"] == "timing"), {})
    return (last["step"] - first["step"]) / (last["time"] - first["time"]), timing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fashion_mnist.yaml")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--skip", type=int, default=100, help="steps before the clock starts (warm-up)")
    ap.add_argument("--log-every", type=int, default=50, help="hvae train's train.log_every (its clock's reads)")
    ap.add_argument("--before", help="another checkout's src/ to run hvae train from, side by side (e.g. main's)")
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # the bare step's own subprocess
    args = ap.parse_args()
    if args.bare:
        print(bare(args.config, args.steps, args.skip))
        return
    variants = {k: (v, None) for k, v in VARIANTS.items()}
    if args.before:
        variants[BEFORE] = ([], str(Path(args.before).resolve()))
    rates: dict[str, list[float]] = {"bare public-API step": [], **{k: [] for k in variants}}
    for rnd in range(args.rounds):  # interleaved: drift on the shared machine hits every contender alike
        cmd = [sys.executable, "-m", "benchmarks.trainer", "--bare", "--config", args.config]
        cmd += ["--steps", str(args.steps), "--skip", str(args.skip)]
        r = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
        rates["bare public-API step"].append(r)
        print(json.dumps({"round": rnd, "run": "bare", "updates_per_s": round(r, 3)}), flush=True)
        for name, (overrides, src) in variants.items():
            r, timing = trainer(args.config, args.steps, args.skip, args.log_every, overrides, src)
            rates[name].append(r)
            print(json.dumps({"round": rnd, "run": name, "updates_per_s": round(r, 3), **timing}), flush=True)
    base = statistics.median(rates["bare public-API step"])
    print("\n| run | updates/s (median) | per round | of the bare step |\n|---|---|---|---|")
    for name, rs in rates.items():
        m = statistics.median(rs)
        print(f"| {name} | {m:.2f} | {', '.join(f'{r:.2f}' for r in rs)} | {100 * m / base:.0f}% |")


if __name__ == "__main__":
    main()
