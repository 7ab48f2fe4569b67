"""``hvae train`` against the plain loop at one wall-clock budget: ``python -m benchmarks.budget [--budget 900]``.

The issue's question (#28): in the same minutes on the same machine, how many updates does the command a user
runs make, and to what bound, against a plain 100-line eager loop of the same model (benchmarks/plain_lvae.py)?

- ``hvae train --config C train.max_time=BUDGET`` in a subprocess, as a user runs it (compilation as configured,
  ``auto`` by default: compiling and probing are inside the budget), plus ``--override``s; its updates are the
  steps its final checkpoint holds; then ``hvae eval RUN --num-samples K --max-examples N``.
- The plain loop in a subprocess of its own: :class:`PlainLVAE`, Adam at the config's ``train.lr``, batches of
  the config's size from the same ``Dataset.batches`` (the same preprocessing), the KL weight warmed up over the
  same fraction of its budget as hvae's run (``train.kl_warmup_fraction``), eager, for BUDGET seconds of its own clock
  (data loading and model building excluded, which favours it); then its IW bound with the same K on the same
  first N test images.
- ``--together``: both at once, one thread each (``OMP_NUM_THREADS=1``), each on its own core of a 2-core machine
  (half the wall time of taking turns; both see the same load); otherwise one after the other with every thread.

Prints one JSON line per contender and a table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def plain_loop(config: str, budget: float, seed: int, num_samples: int, test_examples: int, warmup: float) -> dict:
    """The yardstick's run: updates made in ``budget`` seconds and the IW bound on the first test images."""
    import torch

    from benchmarks.plain_lvae import PlainLVAE
    from hvae.data import load_dataset
    from hvae.runconfig import load_run_config

    cfg, _ = load_run_config(config)
    torch.manual_seed(seed)
    data = load_dataset(cfg.data)
    model = PlainLVAE(math.prod(cfg.model.data_shape)).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    steps, epoch, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        for x in data.batches("train", cfg.train.batch_size, epoch=epoch):
            elapsed = time.perf_counter() - t0
            if elapsed >= budget:
                break
            # the KL weight warmed up linearly over the first ``warmup`` of the budget, as hvae's
            # train.kl_warmup_fraction under train.max_time
            beta = min(1.0, elapsed / (warmup * budget)) if warmup > 0 else 1.0
            loss, *_ = model(x, beta=beta)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
        epoch += 1
    trained_s = time.perf_counter() - t0
    model.eval()
    torch.manual_seed(1)
    x_test = data.eval_tensor("test")[:test_examples]
    with torch.no_grad():
        iw = torch.cat([model.log_likelihood(xb, num_samples=num_samples) for xb in x_test.split(50)])
    return {"run": "plain loop", "updates": steps, "trained_s": round(trained_s, 1), "iw_bound": float(iw.mean())}


def hvae_run(config: str, budget: float, seed: int, num_samples: int, test_examples: int, overrides, env) -> dict:
    """``hvae train`` for ``budget`` seconds, then ``hvae eval``: its updates, timing record and IW bound."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "hvae", "train", "--config", config, "--out", str(out)]
        cmd += [f"train.max_time={budget:g}", f"train.seed={seed}", "train.progress=false", *overrides]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        timing = next((r for r in reversed(recs) if r.get("split") == "timing"), {})
        steps = max((r["step"] for r in recs if r.get("split") == "train"), default=0)
        ev = [sys.executable, "-m", "hvae", "eval", str(out), "--num-samples", str(num_samples)]
        ev += ["--max-examples", str(test_examples)]
        subprocess.run(ev, check=True, env=env, stdout=subprocess.DEVNULL)
        result = json.loads((out / "eval.json").read_text())
    return {
        "run": "hvae train",
        "updates": int(timing.get("step", steps)),
        "wall_s": timing.get("wall_s"),
        "seconds": timing.get("seconds"),
        "iw_bound": result.get("iw_bound", result.get("log_likelihood")),
    }


def _record(results: list[dict], args: argparse.Namespace) -> None:
    """Print each result as a JSON line (with the seed, budget, K and test images) and append it to ``--json``."""
    for r in results:
        r.update(seed=args.seed, budget_s=args.budget, num_samples=args.num_samples, test_examples=args.test_examples)
        r.update(threads=os.environ.get("OMP_NUM_THREADS"), cores=len(os.sched_getaffinity(0)))
        if r["run"] == "hvae train":
            r["overrides"] = list(args.override)
        print(json.dumps(r))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fashion_mnist.yaml")
    ap.add_argument("--budget", type=float, default=900.0, help="seconds of training each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-samples", type=int, default=100, help="K of the IW bound")
    ap.add_argument("--test-examples", type=int, default=2000)
    ap.add_argument("--together", action="store_true", help="both at once, one thread each")
    ap.add_argument(
        "--only",
        choices=["hvae", "plain"],
        help="run one contender (e.g. each pinned to a core with taskset, OMP_NUM_THREADS=1, in turns)",
    )
    ap.add_argument("--json", help="append each contender's result as a JSON line to this file")
    ap.add_argument(
        "--override",
        nargs="*",
        default=[
            "train.eval_every_s=300",
            "train.checkpoint_every_s=300",
            "train.kl_warmup_epochs=null",
            "train.kl_warmup_fraction=0.1",
        ],
        help="hvae train's overrides (default: the schedules in seconds and a warm-up over 10%% of the budget)",
    )
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # the plain loop's own subprocess
    args = ap.parse_args()
    warmup = next((float(o.split("=")[1]) for o in args.override if o.startswith("train.kl_warmup_fraction=")), 0.0)
    if args.plain:
        print(json.dumps(plain_loop(args.config, args.budget, args.seed, args.num_samples, args.test_examples, warmup)))
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")])))
    if args.together:
        env["OMP_NUM_THREADS"] = "1"
    plain_cmd = [sys.executable, "-m", "benchmarks.budget", "--plain", "--config", args.config]
    plain_cmd += ["--budget", str(args.budget), "--seed", str(args.seed), "--num-samples", str(args.num_samples)]
    plain_cmd += ["--test-examples", str(args.test_examples), "--override", *args.override]
    if args.only is not None:
        if args.only == "hvae":
            results = [
                hvae_run(args.config, args.budget, args.seed, args.num_samples, args.test_examples, args.override, env)
            ]
        else:
            out = subprocess.run(plain_cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
            results = [json.loads(out.strip().splitlines()[-1])]
        _record(results, args)
        return
    if args.together:
        plain = subprocess.Popen(plain_cmd, env=env, stdout=subprocess.PIPE, text=True)
        try:
            mine = hvae_run(
                args.config, args.budget, args.seed, args.num_samples, args.test_examples, args.override, env
            )
        except BaseException:
            plain.kill()
            raise
        theirs = json.loads(plain.communicate()[0].strip().splitlines()[-1])
    else:
        mine = hvae_run(args.config, args.budget, args.seed, args.num_samples, args.test_examples, args.override, env)
        out = subprocess.run(plain_cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        theirs = json.loads(out.strip().splitlines()[-1])
    _record([mine, theirs], args)
    head = f"{args.budget:g} s each, seed {args.seed}, K = {args.num_samples}"
    print(f"\n| {head} | updates | of the plain loop's | IW bound |")
    print("|---|---|---|---|")
    for r in (mine, theirs):
        print(f"| {r['run']} | {r['updates']} | {r['updates'] / theirs['updates']:.2f}x | {r['iw_bound']:.2f} |")


if __name__ == "__main__":
    main()
