"""Compile once per model shape: ``python -m benchmarks.compile_cache [--config C] [--rounds 2] [--steps 40]``.

Runs the real ``hvae train`` command (a subprocess each, ``train.compile=always``) and reads the seconds of
its "compiling and probing" part from the timing record it writes (the first step: tracing, compiling and
the step itself) and its wall time. Each round uses a fresh, empty inductor cache folder
(``TORCHINDUCTOR_CACHE_DIR``) and runs, in this order: the first run (nothing cached), the second run of the
same config (the cache of the first), and the same again with ``train.compile_cache=false`` (both caches
off: only the compiled C++ kernels that inductor's code cache finds in the folder are reused). Prints one
JSON line per run and a table (median over rounds) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = (
    ("first run (empty cache)", []),
    ("second run (the cache of the first)", []),
    ("third run, train.compile_cache=false", ["train.compile_cache=false"]),
)


def train_once(config: str, steps: int, cache: Path, overrides: list[str]) -> dict:
    """One ``hvae train`` in a temporary run folder; its timing record (wall_s, seconds per part)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "hvae", "train", "--config", config, "--out", str(out)]
        cmd += [f"train.max_steps={steps}", "train.compile=always", "train.progress=false", *overrides]
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in records if r["split"] == "timing")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    compile_s: dict[str, list[float]] = {name: [] for name, _ in RUNS}
    wall_s: dict[str, list[float]] = {name: [] for name, _ in RUNS}
    for rnd in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="hvae-inductor-") as cache:
            for name, overrides in RUNS:
                timing = train_once(args.config, args.steps, Path(cache), overrides)
                compile_s[name].append(timing["seconds"]["compiling and probing"])
                wall_s[name].append(timing["wall_s"])
                print(json.dumps({"round": rnd, "run": name, **timing}), flush=True)
    first = statistics.median(compile_s[RUNS[0][0]])
    print(
        f"\n| {args.config}, {args.steps} steps, train.compile=always | compiling (s, median) | per round | "
        "of the first run's | wall (s, median) |"
    )
    print("|---|---|---|---|---|")
    for name, _ in RUNS:
        m = statistics.median(compile_s[name])
        per = ", ".join(f"{s:.1f}" for s in compile_s[name])
        print(f"| {name} | {m:.1f} | {per} | {100 * m / first:.0f}% | {statistics.median(wall_s[name]):.1f} |")


if __name__ == "__main__":
    main()
