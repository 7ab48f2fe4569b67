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

This module is the command line; the timing is :mod:`benchmarks.harness`'s, what is measured
:mod:`benchmarks.suites`', the Markdown :mod:`benchmarks.tables`'.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import hvae
from benchmarks.harness import machine, use_device
from benchmarks.suites import BUILT_HERE, EXTENSION_MODELS, QUALITY_MODELS, quality, quality_model_name, run
from benchmarks.tables import EXT_END, EXT_START, extensions_table, replace_between, tables, write_results

HERE = Path(__file__).parent


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
        use_device(args.device)
        data = {"source": "fashion_mnist", "flatten": True, "binarize": "dynamic", "val_fraction": 0.0}
        budget = 60 * args.budget_min
        rows = quality(budget, args.num_samples, args.test_examples, data, EXTENSION_MODELS, batch_size=32)
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "extensions.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
        table = extensions_table(rows, budget)
        print(table)
        if not args.no_write:
            path = HERE / "RESULTS.md"
            path.write_text(replace_between(path.read_text(), EXT_START, EXT_END, table))
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
